"""LoRAWorker: one replica, one engine. The engine steps in its own process (fair_lora's AsyncLLMEngine); this
process admits requests, streams their deltas to the ingress (or answers a non-streamed request with one
message), follows the cluster-wide hot-adapter plan, and reports its hot adapter and queue to the router."""
import asyncio
import logging
import time
from collections.abc import AsyncIterator

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.app_args import AppArgs
from deployments.hot_adapter_sync import HotAdapterSync
from deployments.live_metrics import LiveMetrics
from deployments.popularity_link import PopularityLink
from deployments.request_admission import admit
from deployments.worker_metrics import WorkerMetrics, adapter_tag
from deployments.worker_protocol import Admitted, Completion, Delta, Failed, GenerateRequest, Rejected
from deployments.worker_stats import WorkerStats
from fair_lora import FairLoRAError
from fair_lora.serving.async_engine import AsyncLLMEngine, RequestDelta, RequestStream
from fair_lora.serving.core_client import EngineDeadError
from fair_lora.serving.core_messages import StepReport
from fair_lora.errors import AdapterInUseError

logger = logging.getLogger("ray.serve")


class LoRAWorker:
    async def __init__(self, args: AppArgs, tracker: DeploymentHandle) -> None:
        self.args = args
        self.metrics = WorkerMetrics(self.rank)
        self.metrics.set_hot(None)
        self.stats = WorkerStats()
        self.hot_adapter: str | None = None  # as the engine's last step (or switch) reported it
        self.queue = 0  # waiting + running requests after the engine's last step
        self.runtime_adapters: dict[str, str] = {}  # loaded over HTTP (or caught up from the tracker)
        self.unloading: set[str] = set()  # between an unload's check and its end: new requests are refused
        self.engine = await AsyncLLMEngine.start(
            args.engine_config(), self._after_step, args.cpu_threads, args.stream_messages_per_s
        )
        ready = self.engine.ready
        logger.info("worker %d ready: %s; warm-up %.1f s", self.rank, ready.memory_plan, ready.warmup_seconds)
        link = PopularityLink(tracker, args.routing.tracker_timeout_s)
        self.link = link
        self.sync = HotAdapterSync(self, link, args.routing.assignment_poll_s, merges=args.mode == "fair")
        self._sync_task = asyncio.get_running_loop().create_task(self.sync.run_forever())

    @property
    def rank(self) -> int:
        rank = serve.get_replica_context().rank
        return rank.rank if rank is not None else 0

    @property
    def world_size(self) -> int:
        return max(serve.get_replica_context().world_size or 0, self.rank + 1)

    # ---- requests -----------------------------------------------------------------------------------

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[Admitted | Rejected | Failed | Delta]:
        """Admitted (or Rejected / Failed) first, then Deltas; each Delta holds what accrued since the last."""
        try:
            stream = await admit(self.engine, request, self.unloading)
        except (FairLoRAError, EngineDeadError) as error:
            yield self._refusal(error)
            return
        finished = False
        try:
            yield self._admitted(request, stream)
            async for delta in self._follow(request, stream):
                finished = delta.finished
                yield self._delta(delta, stream)
        except EngineDeadError as error:
            finished = True
            yield self._failed(error)
        finally:
            if not finished:  # the client went away (or the ingress was cancelled): free the KV blocks now
                self._abort(request.request_id)

    async def generate_once(self, request: GenerateRequest) -> Completion | Rejected | Failed:
        """The whole request in one message to the ingress."""
        try:
            stream = await admit(self.engine, request, self.unloading, deltas=False)
        except (FairLoRAError, EngineDeadError) as error:
            return self._refusal(error)
        admitted = self._admitted(request, stream)
        try:
            async for _ in self._follow(request, stream):
                pass
        except EngineDeadError as error:
            return self._failed(error)
        except asyncio.CancelledError:  # the client went away: free the KV blocks now
            self._abort(request.request_id)
            raise
        tokens = self.engine.token_strings(stream.token_ids) if stream.want_logprobs else None
        logprobs = stream.logprobs if stream.want_logprobs else None
        self.stats.completion_messages += 1
        return Completion(admitted, stream.token_ids, stream.text, logprobs, tokens, stream.finish_reason, stream.error)

    async def _follow(self, request: GenerateRequest, stream: RequestStream) -> AsyncIterator[RequestDelta]:
        """The stream's deltas, with the request's metrics and access log taken on the way."""
        first = True
        async for delta in stream.deltas():
            if first and stream.first_token_at is not None:
                self.metrics.first_token(request.adapter, stream.first_token_at - request.arrival)
                first = False
            yield delta
        seconds = time.time() - request.arrival
        prompt, generated = len(stream.prompt_token_ids), len(stream.token_ids)
        self.metrics.finished(request.adapter, prompt, generated, seconds)
        client = request.client or adapter_tag(request.adapter)
        self.stats.served(client, prompt, generated, self.args.client_weights.get(client, 1.0))
        if self.args.access_log:
            logger.info(
                "worker %d: %s adapter=%s prompt=%d generated=%d %s %.3f s", self.rank, request.request_id,
                request.adapter, len(stream.prompt_token_ids), len(stream.token_ids), stream.finish_reason, seconds,
            )

    def _admitted(self, request: GenerateRequest, stream: RequestStream) -> Admitted:
        self.stats.admitted(request.adapter, self.hot_adapter)
        return Admitted(worker=self.rank, hot_adapter=self.hot_adapter, prompt_tokens=len(stream.prompt_token_ids))

    def _delta(self, delta: RequestDelta, stream: RequestStream) -> Delta:
        self.stats.stream_messages += 1
        tokens = self.engine.token_strings(delta.token_ids) if stream.want_logprobs else None
        return Delta(delta.token_ids, delta.text, delta.logprobs, tokens, delta.finished, delta.finish_reason, delta.error)

    def _refusal(self, error: Exception) -> Rejected | Failed:
        if isinstance(error, EngineDeadError):
            return self._failed(error)
        return Rejected(error)

    def _failed(self, error: EngineDeadError) -> Failed:
        return Failed(f"worker {self.rank}: {error}", serve.get_replica_context().replica_id.unique_id)

    def _abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self.stats.aborted += 1

    def _after_step(self, report: StepReport) -> None:
        """On this process's event loop, once per engine step."""
        self.queue = report.waiting + report.running
        self.hot_adapter = report.stats.hot_adapter
        self.metrics.step(report)
        self.stats.step(report)

    # ---- adapters and the hot merge (HotAdapterSync calls these) --------------------------------------------

    def service(self) -> dict[str, float]:
        return dict(self.stats.service)

    async def adapters(self) -> list[str]:
        return await self.engine.call("adapters")

    # The switches these make reach hot_adapter, the metrics and switch_history through the engine's switch log
    # (HotAdapterSync.record_switches), with those the engine makes by itself after a merge's trial.
    async def set_hot_adapter(self, name: str | None) -> float:
        return await self.engine.call("set_hot_adapter", name)

    async def assign_hot_adapter(self, name: str | None) -> float:
        return await self.engine.call("assign_hot_adapter", name)

    async def declined_merges(self) -> list[str]:
        return await self.engine.call("declined_merges")

    async def switches_since(self, count: int) -> list[tuple[str | None, float]]:
        return await self.engine.call("switches_since", count)

    async def load_adapter(self, name: str, path: str) -> FairLoRAError | None:
        """Returns the error instead of raising it, so a broadcast can tell each worker's outcome apart."""
        try:
            await self.engine.call("load_adapter", name, path)
        except FairLoRAError as error:
            return error
        self.runtime_adapters[name] = path
        return None

    async def begin_unload(self, name: str) -> FairLoRAError | None:
        """First half of an unload: refuse new requests for `name`, then check that none are unfinished. On an
        error nothing has changed; otherwise finish_unload or cancel_unload must follow."""
        self.unloading.add(name)
        users = await self.engine.call("requests_using", name)  # after every request admitted before the line above
        if not users:
            return None
        self.unloading.discard(name)
        return AdapterInUseError(
            f"adapter {name!r} is used by {len(users)} unfinished requests on worker {self.rank}; unload it later"
        )

    def cancel_unload(self, name: str) -> None:
        self.unloading.discard(name)

    async def finish_unload(self, name: str) -> FairLoRAError | None:
        try:
            if self.hot_adapter == name:  # unmerge first; the plan stops naming it once it is gone
                await self.sync.switch(None)
            await self.engine.call("unload_adapter", name)
        except FairLoRAError as error:
            return error
        finally:
            self.unloading.discard(name)
        self.runtime_adapters.pop(name, None)
        return None

    # ---- what routing, health checks, /stats and /v1/models read ----------------------------------------------

    async def record_routing_stats(self) -> dict:
        return {"hot_adapter": self.hot_adapter, "queue": self.queue, "rank": self.rank, "alive": self.engine.alive}

    async def describe(self) -> dict:
        return {
            **await self.engine.call("stats"),
            **self.stats.snapshot(),
            "adapters": await self.engine.call("adapters"),
            "max_model_len": self.engine.max_model_len,
            "device_name": self.engine.ready.device_name,
            "memory_plan": self.engine.ready.memory_plan,
            "warmup_seconds": self.engine.ready.warmup_seconds,
            "switch_history": list(self.sync.switch_history),
            "worker": self.rank,
            "replica": serve.get_replica_context().replica_tag,
            "engine_pid": self.engine.client.process.pid,  # for operators (and fault tests) on the worker's node
            "node_id": ray.get_runtime_context().get_node_id(),
            "runtime_adapters": dict(self.runtime_adapters),
            "popularity_tracker_reachable": self.link.available,
        }

    async def live_metrics(self) -> tuple[dict[str, str], LiveMetrics]:
        """This replica's metrics, for the ingress's GET /metrics (only replicas that answer are shown)."""
        return {"replica": serve.get_replica_context().replica_tag}, self.metrics.live

    async def check_health(self) -> None:
        if not self.engine.alive:
            raise RuntimeError(f"worker {self.rank}: the engine process stopped: {self.engine.error}")

    async def __del__(self) -> None:
        self._sync_task.cancel()
        await self.engine.close()
