"""The popularity tracker's planning after a restart, driven directly (its deployment class, no cluster)."""
import asyncio

from deployments import popularity_tracker
from deployments.popularity_tracker import PopularityTracker
from deployments.worker_protocol import WorkerReport
from fair_lora.hot_adapter.popularity import PopularityConfig


def sync(actor, rank: int, world: int, hot: str | None):
    return asyncio.run(actor.sync_worker(WorkerReport(rank, world, hot, queue=0, runtime_adapters={})))


def test_restarted_tracker_waits_for_every_worker_then_moves_one_merge_not_two():
    """Traffic is already skewed when the new tracker hears from the workers: w0 holds c (no longer wanted), w1
    holds a (still wanted). Planning at w0's report would give w0 a and w1 b (two merges); waiting for w1 gives
    w0 b and leaves w1 alone."""
    actor = PopularityTracker(PopularityConfig(min_requests=10))
    asyncio.run(actor.record({"a": 50, "b": 50}))
    first = sync(actor, 0, 2, "c")
    assert (first.hot_adapter, first.planned) == ("c", False)  # w1 unheard: keep what you have
    assert sync(actor, 1, 2, "a").hot_adapter == "a"
    assert sync(actor, 0, 2, "c").hot_adapter == "b"
    assert actor._planner.current == ["b", "a"]


def test_a_worker_that_never_reports_does_not_block_planning(monkeypatch):
    actor = PopularityTracker(PopularityConfig(min_requests=10))
    asyncio.run(actor.record({"a": 100}))
    assert not sync(actor, 0, 2, None).planned
    monkeypatch.setattr(popularity_tracker, "ADOPTION_WAIT_S", 0.0)
    assignment = sync(actor, 0, 2, None)
    assert assignment.planned and assignment.hot_adapter == "a"
