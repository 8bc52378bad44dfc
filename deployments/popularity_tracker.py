"""The cluster's popularity window and hot-adapter plan: the one replica of the app's PopularityTracker
deployment. The app owns it: `serve delete` removes it, and Serve replaces it if it dies, built again from the
app's popularity settings.

Its state is soft. Ingress replicas feed it request counts; workers poll it for their assignment and report
their state. After a restart the window refills from new traffic; until it holds `min_requests` requests
it answers `planned=False` and workers keep the adapter they have merged. The planner adopts each
worker's merge from its first report and plans only once every worker has reported (or ADOPTION_WAIT_S has
passed), so a restarted tracker moves only the merges the new window no longer supports. The adapters loaded at
runtime are rebuilt from the workers' reports, minus those unloaded since the tracker started.

Each worker judges the merges it is assigned by its own step costs (merge_gain.py) and reports the adapters whose
merge did not pay there (`declined`); the plan leaves out the union of them over the workers' latest reports
until the workers stop reporting them (their rejection lifted: more traffic, time, or a batch of theirs alone).
"""
import time
from collections import Counter

from deployments.worker_protocol import Assignment, WorkerReport
from fair_lora.hot_adapter.popularity import PopularityConfig, PopularityWindow, WorkerPlanner

ADOPTION_WAIT_S = 5.0  # the longest a new tracker waits for every worker's first report before it plans anyway


class PopularityTracker:
    def __init__(self, config: PopularityConfig) -> None:
        self.config = config
        self._window = PopularityWindow(config)
        self._planner = WorkerPlanner(0, config)
        self._planned = False
        self._adopted: set[int] = set()  # ranks whose merge the planner has taken from their first report
        self._adopting_since = time.time()
        self._reports: dict[int, tuple[float, WorkerReport]] = {}
        self._registered: dict[str, str] = {}  # runtime adapters: name -> path
        self._unloaded: set[str] = set()  # since this tracker started; keeps stale reports from resurrecting them
        self._started = time.time()

    async def record(self, counts: dict[str | None, int]) -> None:
        self._window.merge_counts(counts)

    async def sync_worker(self, report: WorkerReport) -> Assignment:
        self._reports[report.rank] = (time.time(), report)
        for name, path in report.runtime_adapters.items():
            if name not in self._unloaded:
                self._registered.setdefault(name, path)
        if report.world_size != len(self._planner.current):
            self._planner.resize(report.world_size)
        if report.rank not in self._adopted and report.rank < report.world_size:
            # A worker this tracker has never answered holds what an earlier one (or nobody) assigned: the
            # planner starts from that.
            self._planner.adopt(report.rank, report.hot_adapter)
            self._adopted.add(report.rank)
        # No plan before every worker's merge is known (or a worker is too late): planning with some unknown
        # would move merges that could have stayed.
        waiting = time.time() - self._adopting_since < ADOPTION_WAIT_S
        if waiting and not self._adopted.issuperset(range(report.world_size)):
            return Assignment(hot_adapter=report.hot_adapter, planned=False, runtime_adapters=dict(self._registered))
        plan = self._plan()
        hot = plan[report.rank] if report.rank < len(plan) else None
        return Assignment(hot_adapter=hot, planned=self._planned, runtime_adapters=dict(self._registered))

    def _plan(self) -> list[str | None]:
        plan = self._planner.plan(self._window, self._declined())
        self._planned = self._planned or self._window.total() >= self.config.min_requests
        return plan

    def _declined(self) -> frozenset[str]:
        """Declined by any worker of the current fleet (a rank gone since a scale-down no longer speaks for it)."""
        size = len(self._planner.current)
        return frozenset(a for rank, (_, r) in self._reports.items() if rank < size for a in r.declined)

    async def register_adapter(self, name: str, path: str) -> None:
        self._unloaded.discard(name)
        self._registered[name] = path

    async def unregister_adapter(self, name: str) -> None:
        self._unloaded.add(name)
        self._registered.pop(name, None)

    async def snapshot(self) -> dict:
        now = time.time()
        return {
            "window": self._window.snapshot(),
            "shares": self._window.shares(),
            "plan": self._planner.current,
            "planned": self._planned,
            "declined": sorted(self._declined()),
            "tracker_uptime_s": now - self._started,
            "config": vars(self.config),
            "workers": {
                rank: {"hot_adapter": r.hot_adapter, "queue": r.queue, "declined": r.declined, "report_age_s": now - at}
                for rank, (at, r) in sorted(self._reports.items())
            },
            "runtime_adapters": dict(self._registered),
            "service": self._service(),
        }

    def _service(self) -> dict[str, float]:
        """Tokens served per client over every worker that has reported (VTC's measure: prompt + 2 × output,
        over the client's weight): the cluster-wide view of fairness; each engine's VTC enforces it locally."""
        total: Counter[str] = Counter()
        for _, report in self._reports.values():
            total.update(report.service)
        return dict(total)
