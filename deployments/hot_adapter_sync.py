"""A worker's side of the cluster-wide plan: every poll it reports its state to the popularity tracker, loads
the adapters its peers got at runtime (a replaced worker catches up), and hands the adapter assigned to it to
its engine (`assign_hot_adapter`). The engine judges that merge by its own step costs like one it chose itself
(fair_lora/hot_adapter/merge_gain.py: a trial, undone if it does not pay); the adapters it declined are
reported back, and the tracker plans them out. The switches the engine makes, on assignment or after a trial,
are read from its switch log each poll into switch_history and the merge metrics."""
import asyncio
import logging
import time
from collections import deque
from typing import Protocol

from deployments.popularity_link import PopularityLink
from deployments.worker_metrics import WorkerMetrics
from deployments.worker_protocol import Assignment, WorkerReport
from fair_lora import FairLoRAError

logger = logging.getLogger("ray.serve")
SWITCH_HISTORY = 100  # the most recent hot-adapter switches /stats shows
_UNASSIGNED = object()  # nothing assigned yet, or the assignment ended by a manual switch


class SyncedWorker(Protocol):
    rank: int
    world_size: int
    hot_adapter: str | None
    queue: int
    runtime_adapters: dict[str, str]
    metrics: WorkerMetrics

    def service(self) -> dict[str, float]: ...
    async def adapters(self) -> list[str]: ...
    async def load_adapter(self, name: str, path: str) -> FairLoRAError | None: ...
    async def set_hot_adapter(self, name: str | None) -> float: ...
    async def assign_hot_adapter(self, name: str | None) -> float: ...
    async def declined_merges(self) -> list[str]: ...
    async def switches_since(self, count: int) -> list[tuple[str | None, float]]: ...


class HotAdapterSync:
    def __init__(self, worker: SyncedWorker, link: PopularityLink, poll_s: float, merges: bool) -> None:
        self.worker, self.link, self.poll_s, self.merges = worker, link, poll_s, merges
        self.switch_history: deque[dict] = deque(maxlen=SWITCH_HISTORY)
        self._failed_catch_up: set[tuple[str, str]] = set()
        self._assigned: object = _UNASSIGNED  # what the engine was last told to follow
        self._manual_switches = 0  # an assignment answered after one of these may have been ended by it
        self._switches_seen = 0  # entries of the engine's switch log already in switch_history and the metrics
        self._merged: str | None = None  # the last of them: "from" of the next (step reports move hot_adapter too)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the next poll retries; serving never depends on this loop
                logger.exception("worker %d: syncing with the popularity tracker failed", self.worker.rank)

    async def sync(self) -> None:
        w = self.worker
        if self.merges:
            await self.record_switches()  # the engine's own since the last poll: a trial undone, a merge retried
        w.metrics.set_hot(w.hot_adapter)  # a gauge left unset for a while drops out of Ray's export: keep it fresh
        declined = await w.declined_merges() if self.merges else []
        report = WorkerReport(
            w.rank, w.world_size, w.hot_adapter, w.queue, dict(w.runtime_adapters), w.service(), declined
        )
        assignment: Assignment | None = await self.link.call("sync_worker", report)
        if assignment is None:
            return  # tracker unreachable: keep the current merge, routing keeps following what we report
        await self._catch_up(assignment.runtime_adapters)
        if assignment.planned and self.merges:
            await self._apply(assignment.hot_adapter)

    async def switch(self, target: str | None) -> None:
        """Merge `target` now, unjudged (an unload unmerges its adapter this way); it ends the engine's
        assignment, so the next planned poll assigns again."""
        self._assigned = _UNASSIGNED
        self._manual_switches += 1
        try:
            await self.worker.set_hot_adapter(target)
        finally:
            await self.record_switches()

    async def record_switches(self) -> None:
        """The engine's switches not yet seen, into switch_history and the metrics ("at": when this worker learnt
        of it, within a poll of the switch). Concurrent callers each record only what the other has not."""
        since = self._switches_seen
        new = await self.worker.switches_since(since)
        fresh = new[self._switches_seen - since:]
        self._switches_seen = max(self._switches_seen, since + len(new))
        for target, seconds in fresh:
            self.switch_history.append({"from": self._merged, "to": target, "seconds": seconds, "at": time.time()})
            self.worker.metrics.switch(self._merged, target, seconds)
            self._merged = self.worker.hot_adapter = target

    async def _apply(self, target: str | None) -> None:
        # Assigned already: the engine follows it between steps (merged, or declined until its rejection lifts).
        if target == self._assigned or (target is not None and target not in await self.worker.adapters()):
            return
        manual = self._manual_switches
        try:
            await self.worker.assign_hot_adapter(target)
        except FairLoRAError as error:  # e.g. unloaded since the plan was made: the next poll tries again
            logger.warning("worker %d: cannot assign %r now: %s", self.worker.rank, target, error)
            return
        if manual == self._manual_switches:
            self._assigned = target
        await self.record_switches()

    async def _catch_up(self, registry: dict[str, str]) -> None:
        loaded = set(await self.worker.adapters())
        for name, path in registry.items():
            if name in loaded or (name, path) in self._failed_catch_up:
                continue
            error = await self.worker.load_adapter(name, path)
            if error is not None:
                self._failed_catch_up.add((name, path))
                logger.warning("worker %d: cannot load runtime adapter %r from %s: %s", self.worker.rank, name, path, error)
