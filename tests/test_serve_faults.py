"""Overload and failures: a burst far beyond the queue gets only 200s and 429s and leaves every KV block free;
killing the popularity actor or a worker mid-stream loses no request silently (each completes or ends with
a clear error), Serve replaces the worker, and later requests succeed."""
import asyncio

import httpx
import pytest
import ray

from tests.serve_fixtures import (
    demo_config_args,
    deploy,
    offline,
    replica_actor,
    send_all,
    stream_completion,
    undeploy,
    wait_for,
)

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]

BASE = "fair-lora-demo"
QUEUE = 4  # max_waiting per worker
ARGS_POPULARITY_DWELL = 7.0  # not the default: a tracker rebuilt from defaults would not have it
ARGS = {
    "max_num_seqs": 4, "max_waiting": QUEUE, "popularity": {"min_dwell_s": ARGS_POPULARITY_DWELL},
    "routing": {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1},
}
# The ingress's handle holds requests it has not routed yet against max_queued_requests (default: max_waiting, 4):
# six streams sent at once could get a 429 before reaching any worker. Room for them; the burst still overflows.
WORKERS = {**demo_config_args()["workers"], "max_queued_requests": 16}


@pytest.fixture(scope="module")
def app(ray_cluster):
    served = deploy(ray_cluster, "faults_app", {**demo_config_args(), **ARGS, "workers": WORKERS})
    yield served
    undeploy(served)


def idle_and_free(app) -> bool:
    workers = app.stats()["workers"]
    return all(w.get("running") == 0 and w.get("waiting") == 0 and w["free_blocks"] == w["num_blocks"] for w in workers)


def streams(app, bodies: list[dict], during) -> list:
    """Run the streams; once one of them has produced output, call `during()` (the fault) beside them."""

    async def run():
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            started = asyncio.Event()
            tasks = [asyncio.create_task(stream_completion(client, b, started)) for b in bodies]
            await asyncio.wait_for(started.wait(), timeout=60)
            await asyncio.to_thread(during)
            return await asyncio.gather(*tasks)

    return asyncio.run(run())


def live_metrics(app) -> str:
    with app.client() as c:
        response = c.get("/metrics")
    response.raise_for_status()
    return response.text


def long_request(i: int, adapter: str | None, max_tokens: int) -> dict:
    return {"model": adapter or BASE, "prompt": f"fault {i}", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def test_burst_of_ten_times_the_queue_gets_only_200_and_429_and_frees_every_block(app):
    workers = app.args["workers"]["num_replicas"]
    bodies = [{"model": f"adapter-{i % 6}", "prompt": f"burst {i}", "max_tokens": 8} for i in range(10 * QUEUE * workers + 20)]
    replies = send_all(app.url, "/v1/completions", bodies, concurrency=len(bodies))
    statuses = {r.status for r in replies}
    assert statuses <= {200, 429}, [r.body for r in replies if r.status not in (200, 429)]
    assert 200 in statuses and 429 in statuses
    for reply in replies:
        if reply.status == 429:
            assert reply.headers["retry-after"] and reply.body["error"]["type"] == "RateLimitError"
    wait_for(lambda: idle_and_free(app), timeout=10, what="every KV block to be free after the burst")


def test_killing_the_popularity_tracker_mid_stream_loses_no_request_and_serve_rebuilds_it(app, offline_engine):
    bodies = [long_request(i, f"adapter-{i}", 48) for i in range(6)]
    before = app.stats()["popularity"]["tracker_uptime_s"]
    results = streams(app, bodies, lambda: ray.kill(replica_actor(app.name, "PopularityTracker"), no_restart=True))
    for body, result in zip(bodies, results):
        assert result.status == 200 and result.done and result.error is None, result
        assert result.text == offline(offline_engine, body["prompt"], body["model"], 48).text
    replies = send_all(app.url, "/v1/completions", [long_request(i, "adapter-0", 4) for i in range(6)], concurrency=3)
    assert all(r.status == 200 for r in replies)
    wait_for(lambda: app.stats()["popularity_tracker"] == "ok", timeout=60, what="Serve to replace the tracker")
    popularity = app.stats()["popularity"]
    assert popularity["tracker_uptime_s"] < before + 60, "the tracker answering is not a new one"
    assert popularity["config"]["min_dwell_s"] == ARGS_POPULARITY_DWELL, "the new tracker lost the app's settings"
    replies = send_all(app.url, "/v1/completions", [long_request(i, "adapter-0", 2) for i in range(4)], concurrency=2)
    assert all(r.status == 200 for r in replies)
    wait_for(lambda: app.stats()["popularity"]["window"]["total"] > 0, timeout=10, what="the window to refill")


def test_killing_a_worker_mid_stream_fails_only_its_requests_and_serve_replaces_it(app, offline_engine):
    path = str(offline_engine.model_dir.parent / "adapters" / "adapter-3")
    with app.client() as c:
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": path}).status_code == 200
    before = {w["worker"]: w["replica"] for w in app.stats()["workers"]}
    assert f'replica="{before[0]}"' in live_metrics(app)
    bodies = [long_request(i, ["late", "adapter-1", None][i % 3], 400) for i in range(6)]

    def kill_worker_0() -> None:
        wait_for(lambda: all(w["running"] for w in app.stats()["workers"]), timeout=10, what="both workers busy")
        ray.kill(replica_actor(app.name, "LoRAWorker", before[0]), no_restart=True)

    results = streams(app, bodies, kill_worker_0)
    failed = [r for r in results if r.error is not None]
    assert failed, "worker 0 held requests; they must end with an error"
    for body, result in zip(bodies, results):
        assert result.done or result.error is not None, f"a stream ended silently: {result}"
        if result.error is not None:
            assert result.error["code"] == 503 and "worker" in result.error["message"], result.error
        else:
            same_weights = {"late": "adapter-3", BASE: None}.get(body["model"], body["model"])
            want = offline(offline_engine, body["prompt"], same_weights, 400)
            assert result.text == want.text and result.finish_reason == "length"

    def replaced() -> bool:
        workers = app.stats()["workers"]
        tags = {w.get("worker"): w.get("replica") for w in workers}
        return len(workers) == 2 and tags.get(0) not in (None, before[0]) and all("adapters" in w for w in workers)

    wait_for(replaced, timeout=90, what="Serve to replace the killed worker")
    new = next(w for w in app.stats()["workers"] if w["worker"] == 0)
    assert "late" in new["adapters"], "the replacement did not catch up on the adapter loaded at runtime"
    answered: set[str] = set()

    def both_workers_answer() -> bool:  # routing may favour one worker at first; both must serve soon
        replies = send_all(app.url, "/v1/completions", [long_request(i, "late", 4) for i in range(6)], concurrency=6)
        assert all(r.status == 200 for r in replies), [r.body for r in replies]
        answered.update(r.headers["x-fair-lora-worker"] for r in replies)
        return answered == {"0", "1"}

    wait_for(both_workers_answer, timeout=30, what="both workers to answer after the replacement")
    text = live_metrics(app)  # the dead replica's series are gone (Ray's own export keeps them); its successor's are in
    assert f'replica="{before[0]}"' not in text and f'replica="{new["replica"]}"' in text
    wait_for(lambda: idle_and_free(app), timeout=10, what="every KV block to be free")
