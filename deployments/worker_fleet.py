"""Operations that reach every worker (Serve's handle.broadcast): load, unload, describe, live metrics."""
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.http_errors import HTTPError, to_http_error
from deployments.live_metrics import LiveMetrics
from deployments.popularity_link import PopularityLink

from fair_lora import FairLoRAError
from fair_lora.serving.core_client import EngineDeadError
from fair_lora.errors import UnknownAdapterError


class WorkerFleet:
    def __init__(self, workers: DeploymentHandle, link: PopularityLink, timeout_s: float) -> None:
        self.workers = workers
        self.link = link
        self.timeout_s = timeout_s

    async def _broadcast(self, method: str, *args) -> list:
        try:
            response = self.workers.broadcast(method, *args)
            return await response.results_async(timeout_s=self.timeout_s, return_exceptions=True)
        except TimeoutError:
            raise HTTPError(503, f"workers did not answer {method} within {self.timeout_s:.0f} s; retry") from None

    async def describe(self) -> list[dict]:
        results = await self._broadcast("describe")
        return sorted(
            (r if isinstance(r, dict) else {"error": repr(r)} for r in results), key=lambda d: d.get("worker", -1)
        )

    async def live_metrics(self) -> list[tuple[dict[str, str], LiveMetrics]]:
        """The metrics of every worker that answers (a dead one's are not shown, unlike in Ray's export)."""
        return [r for r in await self._broadcast("live_metrics") if not isinstance(r, BaseException)]

    async def load(self, name: str, path: str) -> int:
        """Load on every live worker, or on none: a failure anywhere unloads it again. Returns the worker count.
        A worker that died meanwhile is left out: its replacement loads the adapter from the tracker's registry."""
        results = [r for r in await self._broadcast("load_adapter", name, path) if not _lost(r)]
        errors = [r for r in results if r is not None]
        if errors or not results:
            if len(errors) < len(results):
                await self._broadcast("unload_adapter", name)
            raise to_http_error(_first(errors) or HTTPError(503, "no worker is alive to load the adapter; retry"))
        await self.link.call("register_adapter", name, path)  # so a worker that replaces one loads it too
        return len(results)

    async def unload(self, name: str) -> int:
        """Unload everywhere; a worker that no longer has it counts as done. Returns how many had it.

        Two phases: every worker first stops admitting requests for it and checks that none is unfinished;
        if any is busy, every worker takes requests for it again and nothing has changed (409). A request that
        arrives in between is refused (404), never cut off by the unload."""
        began = [r for r in await self._broadcast("begin_unload", name) if not _lost(r)]  # a dead one runs nothing
        busy = [r for r in began if isinstance(r, BaseException) or (r is not None and not isinstance(r, UnknownAdapterError))]
        if busy:
            await self._broadcast("cancel_unload", name)
            raise to_http_error(_first(busy))
        await self.link.call("unregister_adapter", name)
        results = [r for r in await self._broadcast("finish_unload", name) if not _lost(r)]
        missing = [r for r in results if isinstance(r, UnknownAdapterError)]
        failed = [r for r in results if r is not None and not isinstance(r, UnknownAdapterError)]
        if failed:
            error = to_http_error(failed[0])
            done = len(results) - len(failed)
            raise HTTPError(error.status, f"{error.message} (unloaded from {done} of {len(results)} workers; retry)")
        if len(missing) == len(results):
            raise to_http_error(missing[0] if missing else UnknownAdapterError(f"adapter {name!r} is not loaded"))
        return len(results) - len(missing)


def _lost(result: object) -> bool:
    """A worker that died (its replica, or its engine process) before it answered."""
    return isinstance(result, (RayActorError, EngineDeadError))


def _first(errors: list[BaseException]) -> BaseException | None:
    """The client's own mistake (a bad path, an adapter in use) before any other failure: it is what to fix."""
    return next((e for e in errors if isinstance(e, FairLoRAError)), errors[0] if errors else None)
