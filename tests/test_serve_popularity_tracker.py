"""The popularity tracker's planning after a restart, driven directly (its deployment class, no cluster)."""
import asyncio

from deployments import popularity_tracker
from deployments.popularity_tracker import PopularityTracker
from deployments.worker_protocol import WorkerReport
from fair_lora.hot_adapter.popularity import PopularityConfig


def sync(actor, rank: int, world: int, hot: str | None, declined: tuple[str, ...] = ()):
    report = WorkerReport(rank, world, hot, queue=0, runtime_adapters={}, declined=list(declined))
    return asyncio.run(actor.sync_worker(report))


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


def test_the_plan_leaves_out_what_any_worker_declined_until_it_stops_declining_it():
    """Each worker reports the adapters whose merge did not pay on it; the tracker plans the union of its workers'
    latest reports out (a's seats go to nobody), shows it in its snapshot, and plans a again once no worker
    declines it any more. A rank gone since a scale-down no longer speaks."""
    actor = PopularityTracker(PopularityConfig(min_requests=10, min_dwell_s=0.0))
    asyncio.run(actor.record({"a": 50, "b": 50}))
    sync(actor, 0, 2, None)
    assert sorted(actor._planner.current, key=str) == [None, None]  # w1 unheard yet: no plan
    assert sync(actor, 1, 2, None, declined=("a",)).hot_adapter is None, "w1 declined a: nobody gets it"
    assert sync(actor, 0, 2, None).hot_adapter == "b", "w0 gets b, not a, though a never failed on w0"
    snapshot = asyncio.run(actor.snapshot())
    assert snapshot["declined"] == ["a"] and snapshot["plan"] == ["b", None]
    assert [w["declined"] for w in snapshot["workers"].values()] == [[], ["a"]]
    sync(actor, 0, 2, "b", declined=("c",))
    assert asyncio.run(actor.snapshot())["declined"] == ["a", "c"]
    assert sync(actor, 1, 2, None).hot_adapter == "a", "w1's rejection of a lifted (time passed, or a grew)"
    assert asyncio.run(actor.snapshot())["declined"] == ["c"]
    sync(actor, 1, 2, "a", declined=("a", "d"))
    sync(actor, 0, 1, "b", declined=())  # scaled down to one worker
    assert asyncio.run(actor.snapshot())["declined"] == [], "rank 1's last report no longer counts"
