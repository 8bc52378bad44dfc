"""A worker's side of the cluster plan (deployments/hot_adapter_sync.py) over an in-process engine, no cluster:
it hands the assigned adapter to the engine's judged path (assign_hot_adapter, not set_hot_adapter), reports the
merges the engine declined, and takes the switches the engine makes by itself (a trial undone) into its history
and metrics."""
import asyncio

from deployments.hot_adapter_sync import HotAdapterSync
from deployments.worker_protocol import Assignment, WorkerReport
from fair_lora.hot_adapter.merge_gain import MergeGain
from tests.engine_helpers import make_engine
from tests.test_merge_gain import QUICK, Clock, steps


class Metrics:
    def __init__(self) -> None:
        self.switches: list[tuple[str | None, str | None]] = []

    def set_hot(self, adapter: str | None) -> None:
        pass

    def switch(self, old: str | None, new: str | None, seconds: float) -> None:
        self.switches.append((old, new))


class EngineWorker:
    """The SyncedWorker calls, answered by an LLMEngine in this process (a LoRAWorker asks its engine process)."""

    rank, world_size, queue = 0, 1, 0

    def __init__(self, engine) -> None:
        self.engine, self.hot_adapter, self.runtime_adapters, self.metrics = engine, None, {}, Metrics()
        self.calls: list[tuple[str, str | None]] = []

    def service(self) -> dict[str, float]:
        return {}

    async def adapters(self) -> list[str]:
        return self.engine.adapters()

    async def load_adapter(self, name: str, path: str):
        raise AssertionError("nothing to catch up on")

    async def set_hot_adapter(self, name: str | None) -> float:
        self.calls.append(("set", name))
        return self.engine.set_hot_adapter(name)

    async def assign_hot_adapter(self, name: str | None) -> float:
        self.calls.append(("assign", name))
        return self.engine.assign_hot_adapter(name)

    async def declined_merges(self) -> list[str]:
        return self.engine.declined_merges()

    async def switches_since(self, count: int) -> list[tuple[str | None, float]]:
        await asyncio.sleep(0)  # a round trip to the engine process: other coroutines run meanwhile
        return self.engine.switches[count:]


class Tracker:
    """Stands for the PopularityLink: answers each report with the assignment the test sets."""

    def __init__(self) -> None:
        self.reports: list[WorkerReport] = []
        self.assignment = Assignment(hot_adapter=None, planned=True, runtime_adapters={})

    async def call(self, method: str, report: WorkerReport) -> Assignment:
        assert method == "sync_worker"
        self.reports.append(report)
        return self.assignment

    def assign(self, adapter: str | None) -> None:
        self.assignment = Assignment(hot_adapter=adapter, planned=True, runtime_adapters={})


def moves(sync: HotAdapterSync) -> list[tuple[str | None, str | None]]:
    return [(s["from"], s["to"]) for s in sync.switch_history]


def test_the_assigned_merge_is_judged_and_a_declined_one_is_reported_until_its_rejection_lifts(demo):
    engine = make_engine(demo)  # auto_hot=False, as the app's workers run
    clock = Clock()
    engine.hot_switch.gain = gain = MergeGain(QUICK, clock)
    steps(gain, None, 6, 10.0)  # unmerged steps to compare the trial with
    worker, tracker = EngineWorker(engine), Tracker()
    sync = HotAdapterSync(worker, tracker, poll_s=0.1, merges=True)
    tracker.assign("adapter-1")
    asyncio.run(sync.sync())
    assert worker.calls == [("assign", "adapter-1")] and engine.hot_adapter == worker.hot_adapter == "adapter-1"
    asyncio.run(sync.sync())
    assert worker.calls == [("assign", "adapter-1")], "assigned already: the engine follows it, no call per poll"
    steps(gain, "adapter-1", 4, 14.0)  # the trial: merged steps dearer than unmerged ones
    engine.hot_switch.between_steps(auto_hot=False)  # what the engine does before its next step
    assert engine.hot_adapter is None
    asyncio.run(sync.sync())
    assert tracker.reports[-1].declined == ["adapter-1"] and worker.hot_adapter is None
    assert moves(sync) == [(None, "adapter-1"), ("adapter-1", None)] == worker.metrics.switches
    tracker.assign(None)  # the tracker plans it out
    asyncio.run(sync.sync())
    assert worker.calls[-1] == ("assign", None)
    clock.now = QUICK.retry_s  # nobody asks the engine about adapter-1 any more; its rejection lifts all the same
    asyncio.run(sync.sync())
    assert tracker.reports[-1].declined == []
    tracker.assign("adapter-1")
    asyncio.run(sync.sync())
    assert engine.hot_adapter == "adapter-1", "planned again: a new trial"


def test_an_unload_switch_ends_the_assignment_and_the_next_poll_assigns_again(demo):
    engine = make_engine(demo, merge_trial_steps=0)  # every assigned merge stays
    worker, tracker = EngineWorker(engine), Tracker()
    sync = HotAdapterSync(worker, tracker, poll_s=0.1, merges=True)
    tracker.assign("adapter-2")
    asyncio.run(sync.sync())
    asyncio.run(sync.switch(None))  # finish_unload unmerges directly
    assert engine.hot_adapter is None and not engine.hot_switch.assignment
    engine.hot_switch.between_steps(auto_hot=False)
    assert engine.hot_adapter is None, "a manual switch is not undone by the assignment it ended"
    asyncio.run(sync.sync())
    assert worker.calls == [("assign", "adapter-2"), ("set", None), ("assign", "adapter-2")]
    assert engine.hot_adapter == "adapter-2"
    assert moves(sync) == [(None, "adapter-2"), ("adapter-2", None), (None, "adapter-2")]


def test_switches_read_by_two_coroutines_at_once_are_recorded_once(demo):
    engine = make_engine(demo)
    sync = HotAdapterSync(EngineWorker(engine), Tracker(), poll_s=0.1, merges=True)
    engine.set_hot_adapter("adapter-1")
    engine.set_hot_adapter("adapter-3")

    async def both() -> None:
        await asyncio.gather(sync.record_switches(), sync.record_switches())

    asyncio.run(both())
    assert moves(sync) == [(None, "adapter-1"), ("adapter-1", "adapter-3")]
