"""Nothing lost that could be saved: when a worker replica dies, or only its engine process, every request that
had not streamed a token is re-run on the other worker (the client sees a normal answer), and a stream that had
tokens ends with an error event and [DONE]. Also: a worker's queue drops as soon as client-cut streams leave it
idle, and the ingress logs no unretrieved task exception for them. And small HTTP defects, through
Serve: lone surrogates are a 400, X-Client-Id is capped, GET /v1/models/{id} answers."""
import asyncio
import glob
import os
import signal
import time

import httpx
import pytest
import ray

from tests.serve_fixtures import demo_config_args, deploy, replica_actor, stream_completion, undeploy, wait_for

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]

ARGS = {
    "max_num_seqs": 4, "max_waiting": 32,
    "routing": {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1},
}
WORKERS = {**demo_config_args()["workers"], "max_queued_requests": 64}
WHOLE, STREAMED = 12, 6


@pytest.fixture(scope="module")
def app(ray_cluster):
    served = deploy(ray_cluster, "rerun_app", {**demo_config_args(), **ARGS, "workers": WORKERS})
    yield served
    undeploy(served)


def body(i: int, max_tokens: int) -> dict:
    return {"model": f"adapter-{i % 3}", "prompt": f"rerun {i}", "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}


async def _whole(client: httpx.AsyncClient, i: int) -> tuple[int, dict]:
    response = await client.post("/v1/completions", json=body(i, 24))
    return response.status_code, response.json()


def traffic_through(app, fault) -> tuple[list, list]:
    """WHOLE non-streamed requests and STREAMED streams at once; `fault()` runs once a stream has a token."""

    async def run():
        async with httpx.AsyncClient(base_url=app.url, timeout=180) as client:
            started = asyncio.Event()
            streams = [asyncio.create_task(stream_completion(client, body(i, 200), started)) for i in range(STREAMED)]
            whole = [asyncio.create_task(_whole(client, i)) for i in range(WHOLE)]
            await asyncio.wait_for(started.wait(), timeout=60)
            await asyncio.to_thread(fault)
            return await asyncio.gather(*whole), await asyncio.gather(*streams)

    return asyncio.run(run())


def assert_nothing_lost(whole: list, streams: list) -> None:
    for status, reply in whole:
        assert status == 200, reply
        assert reply["choices"][0]["finish_reason"] == "length" and reply["usage"]["completion_tokens"] == 24
    for result in streams:
        assert result.status == 200 and result.done, f"a stream ended without [DONE]: {result}"
        if result.error is not None:  # only a stream that had tokens may fail; it says so
            assert result.text and result.error["code"] == 503 and "incomplete" in result.error["message"], result
        else:
            assert result.finish_reason == "length", result


def workers_by_rank(app) -> dict:
    return {w["worker"]: w for w in app.stats()["workers"] if "worker" in w}


def replaced(app, old_replica: str) -> bool:
    workers = app.stats()["workers"]
    return len(workers) == 2 and all("adapters" in w for w in workers) and old_replica not in {w["replica"] for w in workers}


def test_killing_a_worker_replica_reruns_every_request_that_had_no_token(app):
    victim = workers_by_rank(app)[0]["replica"]
    whole, streams = traffic_through(app, lambda: ray.kill(replica_actor(app.name, "LoRAWorker", victim), no_restart=True))
    assert_nothing_lost(whole, streams)
    wait_for(lambda: replaced(app, victim), timeout=90, what="Serve to replace the killed worker")


def test_killing_a_workers_engine_process_reruns_and_new_requests_avoid_it(app):
    worker = workers_by_rank(app)[1]
    actor = replica_actor(app.name, "LoRAWorker", worker["replica"])
    noticed = []

    def kill_engine() -> None:  # and time how long until the worker's health check fails
        os.kill(worker["engine_pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 10:
            try:
                ray.get(actor.check_health.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the failed check is what we wait for
                noticed.append(time.monotonic() - killed_at)
                return
            time.sleep(0.05)

    whole, streams = traffic_through(app, kill_engine)
    assert_nothing_lost(whole, streams)
    assert noticed and noticed[0] < 1.0, f"the health check failed {noticed} s after the engine died"

    async def right_after() -> list:  # in the moments after the death, before Serve has replaced the worker
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
            return await asyncio.gather(*(_whole(client, i) for i in range(8)))

    replies = asyncio.run(right_after())
    assert all(status == 200 for status, _ in replies), replies
    wait_for(lambda: replaced(app, worker["replica"]), timeout=90, what="Serve to replace the worker whose engine died")


def test_streams_cut_by_their_clients_leave_the_queue_at_zero_within_two_seconds(app, ray_cluster):
    async def cut_streams():
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as client:
            async def cut(i: int) -> None:
                async with client.stream("POST", "/v1/completions", json={**body(i, 400), "stream": True}) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            return  # one event, then the client hangs up

            await asyncio.gather(*(cut(i) for i in range(8)))

    asyncio.run(cut_streams())
    cut_at = time.monotonic()

    def idle() -> bool:
        stats = app.stats()
        queues = [w["queue"] for w in stats["popularity"]["workers"].values()]
        with app.client() as c:
            running = [line for line in c.get("/metrics").text.splitlines() if line.startswith("fair_lora_queue_running")]
        return len(queues) == 2 and not any(queues) and running and all(line.endswith(" 0.0") or line.endswith(" 0") for line in running)

    wait_for(idle, timeout=10, what="the queues to drop to zero after the cut streams", interval=0.1)
    assert time.monotonic() - cut_at < 2.5
    logs_dir = ray._private.worker._global_node.get_logs_dir_path()  # this session's, not another cluster's
    logs = glob.glob(f"{logs_dir}/serve/replica_{app.name}_Ingress_*.log") + glob.glob(f"{logs_dir}/worker-*.err")
    assert logs
    noisy = [p for p in logs if "Task exception was never retrieved" in open(p, errors="replace").read()]
    assert not noisy, f"unretrieved task exceptions logged in {noisy}"


def test_x_client_id_is_capped_like_user_and_models_answer_one_by_one(app):
    with app.client() as c:
        long_id = c.post("/v1/completions", json=body(0, 2), headers={"x-client-id": "c" * 257})
        assert long_id.status_code == 400 and long_id.json()["error"]["param"] == "X-Client-Id", long_id.text
        assert c.post("/v1/completions", json=body(0, 2), headers={"x-client-id": "c" * 256}).status_code == 200
        card = c.get("/v1/models/adapter-1")
        assert card.status_code == 200, card.text
        assert card.json()["id"] == "adapter-1" and card.json()["object"] == "model" and card.json()["parent"]
        assert c.get("/v1/models/fair-lora-demo").json()["parent"] is None
        missing = c.get("/v1/models/no-such")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", '{"model": "adapter-1", "prompt": "\\ud800", "max_tokens": 4}'),
    ("/v1/completions", '{"model": "adapter-1", "prompt": "\\udc00", "max_tokens": 4, "stream": true}'),
    ("/v1/chat/completions", '{"model": "adapter-1", "messages": [{"role": "user", "content": "a\\ud800"}]}'),
    ("/generate", '{"prompt": "\\ud800", "stream": true}'),
    ("/v1/completions", '{"model": "adapter-1", "prompt": "x", "stop": ["\\udc00"]}'),
])
def test_a_lone_surrogate_through_serve_is_a_400_never_a_503(app, path, body):
    with app.client() as c:
        response = c.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "not valid Unicode" in response.json()["error"]["message"]
