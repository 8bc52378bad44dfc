"""Whether the app's workers are warm, from Serve's controller: a worker replica counts as RUNNING only once its
constructor returned, i.e. its engine is built, its adapters loaded and its warm-up done. Asked of the controller,
never of the workers, so that the answer comes at once while they are still starting."""
import asyncio
import time
from dataclasses import dataclass

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

CACHE_S = 0.25  # a polling client must not turn into a stream of controller calls


@dataclass(frozen=True)
class Readiness:
    running: int  # worker replicas that finished starting
    wanted: int  # workers.num_replicas

    @property
    def ready(self) -> bool:
        return self.running >= self.wanted

    def describe(self) -> str:
        if self.ready:
            return f"ready: {self.running} of {self.wanted} workers warm"
        return f"starting: {self.running} of {self.wanted} workers warm (the first start converts the model); retry"


class WorkerReadiness:
    def __init__(self, workers: DeploymentHandle, wanted: int) -> None:
        self.app_name, self.deployment = workers.app_name, workers.deployment_name
        self.wanted = wanted
        self._last: tuple[float, Readiness] | None = None

    async def check(self) -> Readiness:
        now = time.monotonic()
        if self._last is None or now - self._last[0] > CACHE_S:
            self._last = (now, Readiness(await asyncio.to_thread(self._running), self.wanted))
        return self._last[1]

    def _running(self) -> int:
        app = serve.status().applications.get(self.app_name)
        workers = app.deployments.get(self.deployment) if app else None
        return workers.replica_states.get(ReplicaState.RUNNING, 0) if workers else 0
