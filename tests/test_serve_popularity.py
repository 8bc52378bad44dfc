"""Skewed traffic makes the popularity actor assign the popular adapter to a worker, that worker merges it
and the adapter's requests are routed there; a traffic shift moves the assignment without a switch storm;
every output stays equal to the offline engine's."""
import re

import pytest

from tests.serve_fixtures import deploy, offline, send_all, demo_config_args, undeploy, wait_for

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]

FIRST, SECOND = "adapter-2", "adapter-4"
COLD = ["adapter-0", "adapter-1", "adapter-3", None]
PROMPTS = ["skew one", "skew two", "skew three"]
MAX_TOKENS = 4
# 85% of the traffic fills 1.7 of 2 workers: one seat (worth 1.7) passes enter_share, the second (0.7) does not.
POPULARITY = {
    "window_s": 120, "window_requests": 40, "enter_share": 0.75, "exit_share": 0.4, "min_dwell_s": 2.0, "min_requests": 10,
}
ROUTING = {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1}


@pytest.fixture(scope="module")
def app(ray_cluster):
    # Planning and routing are under test here, not whether a merge pays: on a loaded CPU a trial could undo the
    # merge (and add its undo and probe to the switch history), so merge_trial_steps 0 keeps every assigned merge.
    args = {**demo_config_args(), "popularity": POPULARITY, "routing": ROUTING, "merge_trial_steps": 0}
    served = deploy(ray_cluster, "popularity_app", args)
    yield served
    undeploy(served)


@pytest.fixture(scope="module")
def expected(offline_engine):
    cache = {}

    def ids(prompt: str, adapter: str | None) -> list[int]:
        if (prompt, adapter) not in cache:
            cache[prompt, adapter] = offline(offline_engine, prompt, adapter, MAX_TOKENS).token_ids
        return cache[prompt, adapter]

    return ids


def skewed(hot: str, count: int) -> list[dict]:
    """`count` requests, 85% for `hot` (17 of every 20), the rest spread over the cold adapters and the base.

    Cold requests come early in each 20, so no prefix the actor may plan from (10 requests or more) is over
    87.5% hot, the share at which the second worker's seat would pass enter_share."""
    adapters = [COLD[i % len(COLD)] if i % 20 in (0, 6, 13) else hot for i in range(count)]
    return [{"prompt": PROMPTS[i % 3], "adapter": a, "max_tokens": MAX_TOKENS, "ignore_eos": True} for i, a in enumerate(adapters)]


def run(app, expected, bodies: list[dict], concurrency: int = 3):
    replies = send_all(app.url, "/generate", bodies, concurrency=concurrency)
    for body, reply in zip(bodies, replies):
        assert reply.status == 200, reply.body
        assert reply.body["token_ids"] == expected(body["prompt"], body["adapter"])
    return replies


def hot_workers(app, adapter: str) -> list[dict]:
    return [w for w in app.stats()["workers"] if w["hot_adapter"] == adapter]


def wait_for_router(app, adapter: str, timeout: float = 30) -> None:
    """The router sees a worker's new hot adapter within a routing-stats period, but on a loaded machine that
    can take longer: send probe requests for `adapter` until one lands on a worker that has it merged."""

    def probe() -> bool:
        body = {"prompt": PROMPTS[0], "adapter": adapter, "max_tokens": 1}
        reply = send_all(app.url, "/generate", [body], concurrency=1)[0]
        assert reply.status == 200, reply.body
        return reply.headers["x-fair-lora-hot-adapter"] == adapter

    wait_for(probe, timeout=timeout, what=f"the router to send {adapter} requests to its hot worker")


def assert_routed_to_hot_workers(replies, bodies, adapter: str) -> None:
    for body, reply in zip(bodies, replies):
        if body["adapter"] == adapter:
            assert reply.headers["x-fair-lora-hot-adapter"] == adapter, f"{adapter} request went to a worker without it merged"


def test_skewed_traffic_merges_the_popular_adapter_and_routes_its_requests_there(app, expected, ray_cluster):
    run(app, expected, skewed(FIRST, 20), concurrency=1)  # in order: the plan must not depend on admission order
    wait_for(lambda: hot_workers(app, FIRST), timeout=20, what=f"a worker to merge {FIRST}")
    stats = app.stats()
    assert stats["popularity"]["plan"].count(FIRST) == 1, stats["popularity"]
    hot_rank = hot_workers(app, FIRST)[0]["worker"]
    wait_for_router(app, FIRST)
    bodies = skewed(FIRST, 14)
    replies = run(app, expected, bodies)
    assert_routed_to_hot_workers(replies, bodies, FIRST)
    hot = next(w for w in app.stats()["workers"] if w["worker"] == hot_rank)
    assert hot["hot_requests"].get(FIRST, 0) >= sum(b["adapter"] == FIRST for b in bodies)
    metric = re.compile(rf'ray_fair_lora_hot_adapter\{{[^}}]*adapter="{FIRST}"[^}}]*\}} 1\.0')
    wait_for(lambda: metric.search(ray_cluster.metrics()), timeout=20, what="the hot-adapter gauge in the metrics")


def test_traffic_shift_moves_the_assignment_without_a_switch_storm(app, expected):
    run(app, expected, skewed(SECOND, 40))
    wait_for(lambda: hot_workers(app, SECOND) and not hot_workers(app, FIRST), timeout=30, what=f"{SECOND} to replace {FIRST}")
    wait_for_router(app, SECOND)
    bodies = skewed(SECOND, 14)
    assert_routed_to_hot_workers(run(app, expected, bodies), bodies, SECOND)
    histories = [[s["to"] for s in w["switch_history"]] for w in app.stats()["workers"]]
    assert sum(map(len, histories)) <= 4, histories
    for merged in histories:
        adapters = [a for a in merged if a is not None]
        assert len(adapters) == len(set(adapters)), f"a worker went back to an adapter it left: {merged}"
