"""A worker's side of the cluster-wide plan: every poll it reports its state to the popularity tracker, loads
the adapters its peers got at runtime (a replaced worker catches up), and merges the adapter assigned to it."""
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


class HotAdapterSync:
    def __init__(self, worker: SyncedWorker, link: PopularityLink, poll_s: float, merges: bool) -> None:
        self.worker, self.link, self.poll_s, self.merges = worker, link, poll_s, merges
        self.switch_history: deque[dict] = deque(maxlen=SWITCH_HISTORY)
        self._failed_catch_up: set[tuple[str, str]] = set()

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the next poll retries; serving never depends on this loop
                logger.exception("worker %d: syncing with the popularity tracker failed", self.worker.rank)

    async def sync(self) -> None:
        w = self.worker
        w.metrics.set_hot(w.hot_adapter)  # a gauge left unset for a while drops out of Ray's export: keep it fresh
        report = WorkerReport(w.rank, w.world_size, w.hot_adapter, w.queue, dict(w.runtime_adapters), w.service())
        assignment: Assignment | None = await self.link.call("sync_worker", report)
        if assignment is None:
            return  # tracker unreachable: keep the current merge, routing keeps following what we report
        await self._catch_up(assignment.runtime_adapters)
        if assignment.planned and self.merges:
            await self._apply(assignment.hot_adapter)

    async def switch(self, target: str | None) -> None:
        old = self.worker.hot_adapter
        seconds = await self.worker.set_hot_adapter(target)
        self.switch_history.append({"from": old, "to": target, "seconds": seconds, "at": time.time()})

    async def _apply(self, target: str | None) -> None:
        if target == self.worker.hot_adapter or (target is not None and target not in await self.worker.adapters()):
            return
        try:
            await self.switch(target)
        except FairLoRAError as error:  # e.g. every adapter slot pinned by running requests: retry next poll
            logger.warning("worker %d: cannot merge %r now: %s", self.worker.rank, target, error)

    async def _catch_up(self, registry: dict[str, str]) -> None:
        loaded = set(await self.worker.adapters())
        for name, path in registry.items():
            if name in loaded or (name, path) in self._failed_catch_up:
                continue
            error = await self.worker.load_adapter(name, path)
            if error is not None:
                self._failed_catch_up.add((name, path))
                logger.warning("worker %d: cannot load runtime adapter %r from %s: %s", self.worker.rank, name, path, error)
