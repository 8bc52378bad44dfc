"""AsyncLLMEngine: the engine for servers. The engine steps in its own process (serving/core_process.py); this
side tokenizes, detokenizes, checks stop strings and hands each request its deltas on an asyncio loop.

Each step's report is detokenized in one batch on the client's reader thread, then handed to the event loop
in one callback (not one per request). A request whose consumer is slower than the engine finds several
steps' deltas waiting and takes them as one (`RequestStream.deltas()` coalesces), so a busy loop sends fewer,
larger messages instead of falling behind. A request added with `deltas=False` (a non-streamed answer) wakes
its consumer once, when it finishes: with hundreds of requests in flight, a wake-up per request per step is
what limits a worker's event loop.

Streamed requests share a message budget (`stream_messages_per_s`): every message a stream sends costs the
processes downstream (a Ray Serve worker, its ingress, the HTTP proxy) about the same CPU whatever it carries,
so with many streams each one is woken at most every `streams / budget` seconds, its tokens meanwhile grouped
into one delta. With few streams that interval is shorter than a step and every step's tokens go out at once;
a stream's first tokens and its finish always go out at once.
"""
import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from transformers import AutoTokenizer

from fair_lora.config import EngineConfig
from fair_lora.engine.detokenizer import Detokenizer, OutputText, cut_at_stop
from fair_lora.errors import RequestError
from fair_lora.sampling_params import SamplingParams
from fair_lora.serving.core_client import EngineCoreClient, EngineDeadError
from fair_lora.serving.core_messages import Ready, StepReport, TokenDelta


@dataclass
class RequestDelta:
    """What a request gained since its previous delta."""

    token_ids: list[int]
    text: str  # safe to show: never taken back (incomplete characters and possible stop-string starts wait)
    logprobs: list[float] | None  # of token_ids, when asked
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort", "error"
    error: str | None = None  # finish_reason "error": what failed


@dataclass(eq=False)
class RequestStream:
    """One request's outputs as they arrive. Iterate `deltas()`, or await `finished()` for the whole output."""

    request_id: str
    prompt_token_ids: list[int]
    want_logprobs: bool
    output: OutputText  # the whole output so far: ids and text (cut at a stop string), detokenized incrementally
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    wants_deltas: bool = True  # False: only the finishing delta is handed over (read the fields for the rest)
    first_token_at: float | None = None  # time.time() when its first token reached this process
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    held: list["RequestDelta"] = field(default_factory=list)  # deltas not handed over yet (the message budget)
    woken_at: float = float("-inf")  # time.monotonic() of its last hand-over

    async def deltas(self) -> AsyncIterator[RequestDelta]:
        """Every delta up to the finished one; deltas that queued up meanwhile come merged into one."""
        while True:
            delta = _merge(await _drain(self.queue))
            yield delta
            if delta.finished:
                return

    async def finished(self) -> "RequestStream":
        async for _ in self.deltas():
            pass
        return self

    @property
    def token_ids(self) -> list[int]:
        return self.output.ids

    @property
    def text(self) -> str:
        return self.output.text


class AsyncLLMEngine:
    def __init__(
        self, on_step: Callable[[StepReport], None] | None = None, stream_messages_per_s: float | None = None
    ) -> None:
        """Use `await AsyncLLMEngine.start(config)`."""
        self.loop = asyncio.get_running_loop()
        self.on_step = on_step  # called on the event loop after each step's deltas are handed out
        self.stream_messages_per_s = stream_messages_per_s  # None: every step's deltas go out at once
        self.streams: dict[str, RequestStream] = {}
        self.holding: dict[str, RequestStream] = {}  # streams with held deltas, by request id
        self.streaming: set[str] = set()  # unfinished requests that want every delta (event-loop side)
        self.client: EngineCoreClient | None = None
        self.ready: Ready | None = None
        self.tokenizer = None
        self.detokenizer: Detokenizer | None = None

    @classmethod
    async def start(
        cls, config: EngineConfig, on_step: Callable[[StepReport], None] | None = None,
        torch_threads: int | None = None, stream_messages_per_s: float | None = None,
    ) -> "AsyncLLMEngine":
        """Start the engine process and wait until it is warmed up and ready."""
        engine = cls(on_step, stream_messages_per_s)
        core_config = dataclasses.replace(config, detokenize=False)  # text is made here, off the stepping process
        engine.client = EngineCoreClient(core_config, engine._on_report, engine._on_exit, torch_threads)
        engine.ready = await asyncio.to_thread(engine.client.wait_ready)
        engine.tokenizer = await asyncio.to_thread(_load_tokenizer, engine.ready.model_dir)
        engine.detokenizer = Detokenizer(engine.tokenizer) if engine.tokenizer is not None else None
        return engine

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.alive

    @property
    def error(self) -> str | None:
        return self.client.error if self.client else None

    @property
    def max_model_len(self) -> int:
        return self.ready.max_model_len

    # ---- requests -------------------------------------------------------------------------------------

    async def add(
        self, prompt: str | list[int], adapter: str | None, params: SamplingParams, request_id: str | None = None,
        client: str | None = None, deltas: bool = True,
    ) -> RequestStream:
        """Queue a request; raises what the engine refused it for (FairLoRAError) before any output.
        deltas=False: the stream yields one delta, the finishing one; its fields hold the whole output."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: send prompt token ids")
            prompt = await asyncio.to_thread(self.tokenizer.encode, prompt)
        if params.stop and self.detokenizer is None:
            raise RequestError("this model has no tokenizer: stop strings cannot be checked")
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        stream = RequestStream(request_id, list(prompt), params.logprobs, OutputText(list(params.stop)),
                               wants_deltas=deltas)
        self.streams[request_id] = stream  # before the call: its first tokens may follow the reply at once
        if deltas:
            self.streaming.add(request_id)
        core_params = dataclasses.replace(params, stop=[])
        try:
            await asyncio.wrap_future(self.client.call("add_request", stream.prompt_token_ids, adapter, core_params,
                                                       request_id, client))
        except BaseException:
            self.streams.pop(request_id, None)
            self.streaming.discard(request_id)
            self.client.abort(request_id)  # cancelled while queued: it may have been added all the same
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; its stream gets no more deltas."""
        self.holding.pop(request_id, None)
        self.streaming.discard(request_id)
        if self.streams.pop(request_id, None) is not None:
            self.client.abort(request_id)

    async def call(self, method: str, *args):
        """An engine method between two steps (serving/core_process.py CALLS): load_adapter, unload_adapter,
        set_hot_adapter, assign_hot_adapter, declined_merges, switches_since, hot_adapter, adapters, requests_using,
        stats."""
        return await asyncio.wrap_future(self.client.call(method, *args))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Each token decoded alone (OpenAI's logprobs `tokens`)."""
        if self.detokenizer is None:
            return [""] * len(token_ids)
        return self.detokenizer.decode_many([[t] for t in token_ids])

    async def close(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(self.client.close)

    # ---- the reader thread's side -------------------------------------------------------------------------

    def _on_report(self, report: StepReport) -> None:
        """On the client's reader thread: detokenize the step's outputs in one batch, then hand them over."""
        live: list[tuple[RequestStream, TokenDelta]] = []
        now = time.time()
        for d in report.deltas:
            stream = self.streams.get(d.request_id)
            if stream is None or stream.finish_reason is not None:
                continue  # aborted, or finished here by a stop string while the core went on
            if stream.first_token_at is None and d.token_ids:
                stream.first_token_at = now
            stream.output.ids.extend(d.token_ids)
            if d.logprobs is not None:
                stream.logprobs.extend(d.logprobs)
            live.append((stream, d))
        if self.detokenizer is not None:
            self.detokenizer.update([s.output for s, _ in live])
        handed = [(stream, self._delta(stream, d)) for stream, d in live]
        _call_soon(self.loop, self._hand_out, handed, report)

    def _delta(self, stream: RequestStream, d: TokenDelta) -> RequestDelta:
        reason = d.finish_reason
        # As the in-process engine orders them: an end-of-sequence token wins, then stop strings, then length.
        if reason != "stop" and stream.output.stops and cut_at_stop(stream.output, stream.output.stops):
            if reason is None:
                self.client.abort(stream.request_id)  # the core does not see text: it would go on
            reason = "stop"
        finished = reason is not None
        if finished:
            stream.finish_reason, stream.error = reason, d.error
            self.streams.pop(stream.request_id, None)
        text = stream.output.take_delta(finished) if self.detokenizer is not None else ""
        return RequestDelta(d.token_ids, text, d.logprobs, finished, reason, d.error)

    def _hand_out(self, handed: list[tuple[RequestStream, RequestDelta]], report: StepReport) -> None:
        now = time.monotonic()
        interval = self._wake_interval_s()
        for stream, delta in handed:
            if stream.wants_deltas or delta.finished:
                stream.held.append(delta)
                if delta.finished:
                    self.streaming.discard(stream.request_id)
                if delta.finished or now - stream.woken_at >= interval:
                    self._wake(stream, now)
                else:
                    self.holding[stream.request_id] = stream
        for stream in [s for s in self.holding.values() if now - s.woken_at >= interval]:
            self._wake(stream, now)  # held past its interval without new tokens this step (e.g. preempted)
        if self.on_step is not None:
            self.on_step(report)

    def _wake_interval_s(self) -> float:
        """How long a stream waits between two hand-overs: the streams in flight share the message budget."""
        if not self.stream_messages_per_s:
            return 0.0
        return len(self.streaming) / self.stream_messages_per_s

    def _wake(self, stream: RequestStream, now: float) -> None:
        held, stream.held = stream.held, []
        stream.woken_at = now
        self.holding.pop(stream.request_id, None)
        if held:
            stream.queue.put_nowait(_merge(held))

    def _on_exit(self, reason: str) -> None:
        _call_soon(self.loop, self._fail_all, reason)

    def _fail_all(self, reason: str) -> None:
        for stream in list(self.holding.values()):
            self._wake(stream, time.monotonic())  # what they got before the failure, then the failure
        streams, self.streams, self.streaming = self.streams, {}, set()
        for stream in streams.values():
            stream.queue.put_nowait(EngineDeadError(reason))


def _load_tokenizer(model_dir: str):
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):  # a dummy-weight model directory may have none: token ids only
        return None


async def _drain(queue: asyncio.Queue) -> list[RequestDelta]:
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    for item in items:
        if isinstance(item, BaseException):
            raise item
    return items


def _merge(items: list[RequestDelta]) -> RequestDelta:
    if len(items) == 1:
        return items[0]
    last = items[-1]
    logprobs = None if last.logprobs is None else [lp for d in items for lp in (d.logprobs or [])]
    return RequestDelta(
        [t for d in items for t in d.token_ids], "".join(d.text for d in items), logprobs,
        last.finished, last.finish_reason, last.error,
    )


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass
