"""LoRAWorker: one engine per replica, stepped continuously on its own thread; takes its hot adapter from
the popularity actor's plan and reports it (and its queue) to the router through record_routing_stats."""
import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator

import torch
from ray import serve

from deployments.app_args import AppArgs
from deployments.engine_loop import EngineLoop
from deployments.popularity_link import PopularityLink
from deployments.prompt_render import render_prompt
from deployments.worker_metrics import WorkerMetrics, adapter_tag
from deployments.worker_protocol import Admitted, Assignment, Delta, GenerateRequest, Rejected, WorkerReport
from fair_lora import FairLoRAError, LLMEngine, RequestOutput, SamplingParams
from fair_lora.errors import AdapterInUseError, RequestError

logger = logging.getLogger("ray.serve")
SWITCH_HISTORY = 100  # the most recent hot-adapter switches /stats shows


class LoRAWorker:
    def __init__(self, args: AppArgs) -> None:
        if args.cpu_threads:
            torch.set_num_threads(args.cpu_threads)
        self.args = args
        context = serve.get_replica_context()
        self.engine = LLMEngine(args.engine_config())
        self.metrics = WorkerMetrics(self.rank)
        self.metrics.set_hot(None)
        self.requests: Counter[str] = Counter()  # by adapter tag
        self.hot_requests: Counter[str] = Counter()  # of those, admitted while their adapter was merged here
        self.max_batch_size = 0
        self.max_adapters_per_step = 0  # distinct adapters (base counts as one) that got a token in one step
        self.batched_steps = 0  # steps that ran more than one request (compare two reads to see a burst batch)
        self.multi_adapter_steps = 0  # steps that gave tokens to more than one adapter
        self.switch_history: deque[dict] = deque(maxlen=SWITCH_HISTORY)
        self.runtime_adapters: dict[str, str] = {}  # loaded over HTTP (or caught up from the actor)
        # Written by the engine thread after each step and switch; read by routing without waiting for a step.
        self.routing_state: dict = {"hot_adapter": None, "queue": 0, "rank": self.rank}
        self._failed_catch_up: set[tuple[str, str]] = set()
        self.loop = EngineLoop(self.engine, self._after_step)
        self.link = PopularityLink(context.app_name, args.popularity.config(), args.routing.actor_timeout_s)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    @property
    def rank(self) -> int:
        rank = serve.get_replica_context().rank
        return rank.rank if rank is not None else 0

    @property
    def world_size(self) -> int:
        return max(serve.get_replica_context().world_size or 0, self.rank + 1)

    # ---- requests -----------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Admitted | Rejected | Delta]:
        try:
            outputs, admitted = await self.loop.add_request(request.request_id, lambda: self._admit(request))
        except FairLoRAError as error:
            yield Rejected(error)
            return
        except asyncio.CancelledError:  # the add is queued (maybe done already): abort runs after it, in order
            self.loop.abort(request.request_id)
            raise
        finished = False
        try:
            yield admitted
            while not finished:
                delta = _merge(await _drain(outputs), self.engine.tokenizer)
                finished = delta.finished
                yield delta
        finally:
            if not finished:  # the client went away (or the ingress was cancelled): free the KV blocks now
                self.loop.abort(request.request_id)

    def _admit(self, request: GenerateRequest) -> Admitted:
        """Runs on the engine thread."""
        prompt = render_prompt(self.engine.tokenizer, request)
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = max(self.engine.max_model_len - len(prompt), 1)
        try:
            params = SamplingParams(max_tokens=max_tokens, **request.sampling)
        except (ValueError, TypeError) as error:  # the user's values: a 400, not a failed worker
            raise RequestError(f"invalid sampling parameters: {error}") from error
        self.engine.add_request(prompt, request.adapter, params, request.request_id)
        hot = self.engine.hot_adapter
        tag = adapter_tag(request.adapter)
        self.requests[tag] += 1
        if request.adapter is not None and request.adapter == hot:
            self.hot_requests[tag] += 1
        return Admitted(worker=self.rank, hot_adapter=hot, prompt_tokens=len(prompt))

    def _after_step(self, outputs: list[RequestOutput]) -> None:
        """Runs on the engine thread after every step."""
        stats = self.engine.last_step
        waiting, running = len(self.engine.scheduler.waiting), len(self.engine.scheduler.running)
        self.metrics.step(stats, waiting, running)
        self.routing_state = {"hot_adapter": self.engine.hot_adapter, "queue": waiting + running, "rank": self.rank}
        self.max_batch_size = max(self.max_batch_size, stats.num_seqs)
        adapters = len({o.adapter for o in outputs})
        self.max_adapters_per_step = max(self.max_adapters_per_step, adapters)
        self.batched_steps += stats.num_seqs > 1
        self.multi_adapter_steps += adapters > 1
        self.metrics.outputs(outputs)

    # ---- adapters -----------------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> FairLoRAError | None:
        """Returns the error instead of raising it, so a broadcast can tell each worker's outcome apart."""
        try:
            await self.loop.call(lambda: self.engine.load_adapter(name, path))
        except FairLoRAError as error:
            return error
        self.runtime_adapters[name] = path
        return None

    async def check_unload(self, name: str) -> FairLoRAError | None:
        """The error unload_adapter would return now because requests use `name`; changes nothing."""

        def check() -> FairLoRAError | None:
            users = self.engine.requests_using(name)
            if not users:
                return None
            return AdapterInUseError(
                f"adapter {name!r} is used by {len(users)} unfinished requests on worker {self.rank}; unload it later"
            )

        return await self.loop.call(check)

    async def unload_adapter(self, name: str) -> FairLoRAError | None:
        def unload() -> None:
            if self.engine.requests_using(name):
                self.engine.unload_adapter(name)  # refuses, naming the requests; nothing has changed yet
            if self.engine.hot_adapter == name:  # unmerge first; the plan stops naming it once it is gone
                self._switch(None)
            self.engine.unload_adapter(name)

        try:
            await self.loop.call(unload)
        except FairLoRAError as error:
            return error
        self.runtime_adapters.pop(name, None)
        return None

    # ---- the hot adapter ------------------------------------------------------------------------------

    def _switch(self, target: str | None) -> None:
        """Runs on the engine thread, between steps."""
        old = self.engine.hot_adapter
        seconds = self.engine.set_hot_adapter(target)
        self.routing_state = {**self.routing_state, "hot_adapter": target}
        self.metrics.switch(old, target, seconds)
        self.switch_history.append({"from": old, "to": target, "seconds": seconds, "at": time.time()})

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.args.routing.assignment_poll_s)
            try:
                await self._sync()
            except Exception:  # noqa: BLE001 - the next poll retries; serving never depends on this loop
                logger.exception("worker %d: syncing with the popularity actor failed", self.rank)

    async def _sync(self) -> None:
        state = self.routing_state
        report = WorkerReport(
            rank=self.rank,
            world_size=self.world_size,
            hot_adapter=state["hot_adapter"],
            queue=state["queue"],
            runtime_adapters=dict(self.runtime_adapters),
        )
        assignment: Assignment | None = await self.link.call("sync_worker", report)
        if assignment is None:
            return  # actor unreachable: keep the current merge, routing keeps following what we report
        await self._catch_up(assignment.runtime_adapters)
        if assignment.planned and self.args.mode == "fair":
            await self._apply(assignment.hot_adapter)

    async def _apply(self, target: str | None) -> None:
        def apply() -> None:
            if target != self.engine.hot_adapter and (target is None or target in self.engine.adapters()):
                self._switch(target)

        try:
            await self.loop.call(apply)
        except FairLoRAError as error:  # e.g. every adapter slot pinned by running requests: retry next poll
            logger.warning("worker %d: cannot merge %r now: %s", self.rank, target, error)

    async def _catch_up(self, registry: dict[str, str]) -> None:
        """A replaced worker loads the adapters its peers got over HTTP after the app started."""
        loaded = set(await self.loop.call(self.engine.adapters))
        for name, path in registry.items():
            if name in loaded or (name, path) in self._failed_catch_up:
                continue
            error = await self.load_adapter(name, path)
            if error is not None:
                self._failed_catch_up.add((name, path))
                logger.warning("worker %d: cannot load runtime adapter %r from %s: %s", self.rank, name, path, error)

    # ---- what routing, /stats and /v1/models read ---------------------------------------------------------

    async def record_routing_stats(self) -> dict:
        return dict(self.routing_state)

    async def describe(self) -> dict:
        def snapshot() -> dict:  # on the engine thread, between steps: it mutates these
            return {
                **self.engine.stats(),
                "adapters": self.engine.adapters(),
                "max_model_len": self.engine.max_model_len,
                "last_batch_size": self.engine.last_step.num_seqs,
                "aborted": self.loop.aborted,
                "max_batch_size": self.max_batch_size,
                "max_adapters_per_step": self.max_adapters_per_step,
                "batched_steps": self.batched_steps,
                "multi_adapter_steps": self.multi_adapter_steps,
                "requests": dict(self.requests),
                "hot_requests": dict(self.hot_requests),
                "switch_history": list(self.switch_history),
            }

        return {
            **await self.loop.call(snapshot),
            "worker": self.rank,
            "replica": serve.get_replica_context().replica_tag,
            "runtime_adapters": dict(self.runtime_adapters),  # written on this event loop, not the engine thread
            "popularity_actor_reachable": self.link.available,
        }

    async def check_health(self) -> None:
        if not self.loop.alive:
            raise RuntimeError(f"worker {self.rank}: the engine thread stopped: {self.loop.error!r}")

    def __del__(self) -> None:
        self._sync_task.cancel()
        self.loop.stop()


async def _drain(outputs: asyncio.Queue) -> list[RequestOutput]:
    """Everything the engine produced for this request since we last looked (at least one item)."""
    items = [await outputs.get()]
    while not outputs.empty():
        items.append(outputs.get_nowait())
    for item in items:
        if isinstance(item, BaseException):
            raise item
    return items


def _merge(items: list[RequestOutput], tokenizer) -> Delta:
    last = items[-1]
    new_ids = [t for item in items for t in item.new_token_ids]
    logprobs = tokens = None
    if last.logprobs is not None:
        logprobs = last.logprobs[len(last.logprobs) - len(new_ids) :]
        tokens = [tokenizer.decode([t]) for t in new_ids]
    return Delta(new_ids, last.text, logprobs, tokens, last.finished, last.finish_reason)
