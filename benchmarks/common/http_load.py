"""An async load client for the service's plain API (`POST /generate`), timing what a client sees.

    records = await run_load("http://127.0.0.1:8000", requests, arrivals=[0.0, 0.4, ...])   # open loop
    records = await run_load(url, requests, concurrency=32)                                  # closed loop

Open loop (`arrivals`): request i is sent `arrivals[i]` seconds after the start, whatever the server is doing
(S-LoRA's run_exp.py). Closed loop (`concurrency`): `concurrency` requests stay in flight. One RequestRecord per
request, in the order of `requests`, with times in seconds after the run's origin (`time.perf_counter()` at the
start, or the caller's `origin`, so that a caller's own timeline, e.g. polling /stats, shares the clock).

A streaming /generate answers NDJSON: one object per line, each with the token ids (`token_ids`) and text new
since the previous line, `finished`, `finish_reason`, `worker`, `hot_adapter`; the last line also has `usage`.
An error after the headers went out is a line `{"error": {...}}`. A refused request (4xx/5xx) has an error body;
429s carry Retry-After and are recorded, never retried.

The client is aiohttp: httpx's connection pool costs the client ~12 ms of CPU per request from 64 connections
on (0.4 ms with aiohttp, same requests, 2-core machine), which made the client, not the service, the
bottleneck of every run with many requests in flight (H200 serve_bench: 0.8 CPU-s/s in the client at 256).
"""
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np

REQUEST_TIMEOUT_S = 3 * 3600.0  # S-LoRA's client timeout: a request still unanswered after that is an error


@dataclass
class LoadRequest:
    prompt: list[int] | str  # token ids, or text the server tokenizes
    adapter: str | None  # None: the base model
    max_tokens: int
    extra: dict = field(default_factory=dict)  # further /generate fields, e.g. {"stop": ["\n"]}

    def body(self, stream: bool) -> dict:
        body = {"prompt": self.prompt, "adapter": self.adapter, "max_tokens": self.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": stream}
        return {**body, **self.extra}


@dataclass
class RequestRecord:
    index: int  # into the requests given to run_load
    adapter: str | None
    send_time: float  # when the request was sent (s after the origin)
    status: int | None = None  # HTTP status; None: no answer at all (connection failed, timeout)
    prompt_tokens: int | None = None  # from the answer's usage
    output_tokens: int = 0  # tokens received
    token_ids: list[int] = field(default_factory=list)  # received, in order
    text: str = ""
    first_token_time: float | None = None  # the first chunk carrying tokens; None when not streaming
    chunk_times: list[float] = field(default_factory=list)  # every chunk that carried tokens
    chunk_tokens: list[int] = field(default_factory=list)  # how many tokens each of those carried
    end_time: float | None = None  # the answer's last byte
    finish_reason: str | None = None
    worker: int | None = None
    hot_adapter: str | None = None  # the adapter merged on the worker when it admitted the request
    retry_after: str | None = None  # a 429's Retry-After header
    error: dict | str | None = None  # the error body (or stream error line, or exception)

    @property
    def ok(self) -> bool:
        """Answered 200 and finished, with no error in the stream."""
        return self.status == 200 and self.error is None and self.finish_reason is not None

    @property
    def latency(self) -> float | None:
        return None if self.end_time is None else self.end_time - self.send_time

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.send_time


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a new line every 10 s otherwise (logs)."""

    def __init__(self, total: int, label: str = "", enabled: bool = True) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.tty = sys.stderr.isatty()
        self.every_s = 0.5 if self.tty else 10.0
        self.sent = self.done = self.failed = self.throttled = self.tokens = 0
        self.started = self._last = time.perf_counter()

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.every_s):
            return
        self._last = now
        line = (f"{self.label}sent {self.sent}/{self.total}, done {self.done}, in flight {self.sent - self.done}, "
                f"failed {self.failed} (429: {self.throttled}), {self.tokens} tokens, {now - self.started:.0f} s")
        print(("\r" + line + "\x1b[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def finish(self) -> None:
        self.update(force=True)
        if self.enabled and self.tty:
            print(file=sys.stderr)

    def record(self, record: RequestRecord) -> None:
        self.done += 1
        self.failed += not record.ok
        self.throttled += record.status == 429
        self.tokens += record.output_tokens
        self.update()


async def run_load(
    base_url: str,
    requests: Sequence[LoadRequest],
    *,
    arrivals: Sequence[float] | None = None,
    concurrency: int | None = None,
    stream: bool = True,
    progress: bool = True,
    label: str = "",
    origin: float | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> list[RequestRecord]:
    """Send every request (at its arrival offset, or `concurrency` at a time) and record what came back."""
    if (arrivals is None) == (concurrency is None):
        raise ValueError("give exactly one of arrivals (open loop) and concurrency (closed loop)")
    if arrivals is not None and len(arrivals) != len(requests):
        raise ValueError(f"{len(arrivals)} arrivals for {len(requests)} requests")
    origin = time.perf_counter() if origin is None else origin
    bar = Progress(len(requests), label, progress)
    # No connection limit: a pool that makes requests wait for a connection would delay their send time.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, connect=60.0)
    url = base_url.rstrip("/") + "/generate"  # the base may carry an app's route prefix
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(index: int) -> RequestRecord:
            bar.sent += 1
            bar.update()
            record = await _send(client, url, index, requests[index], stream, origin, timeout_s)
            bar.record(record)
            return record

        if arrivals is not None:
            tasks = []
            for index, at in enumerate(arrivals):
                await asyncio.sleep(origin + at - time.perf_counter())
                tasks.append(asyncio.create_task(one(index)))
            records = await asyncio.gather(*tasks)
        else:
            gate = asyncio.Semaphore(concurrency)

            async def gated(index: int) -> RequestRecord:
                async with gate:
                    return await one(index)

            records = await asyncio.gather(*(gated(i) for i in range(len(requests))))
    bar.finish()
    return list(records)


async def _send(
    client: aiohttp.ClientSession, url: str, index: int, request: LoadRequest, stream: bool, origin: float, timeout_s: float
) -> RequestRecord:
    record = RequestRecord(index, request.adapter, send_time=time.perf_counter() - origin)
    try:
        await asyncio.wait_for(_exchange(client, url, request, stream, record, origin), timeout_s)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"
    record.end_time = time.perf_counter() - origin
    return record


async def _exchange(
    client: aiohttp.ClientSession, url: str, request: LoadRequest, stream: bool, record: RequestRecord, origin: float
) -> None:
    async with client.post(url, json=request.body(stream)) as response:
        record.status = response.status
        if response.status != 200:
            record.retry_after = response.headers.get("retry-after")
            record.error = _error_body(await response.read())
            return
        if not stream:
            body = json.loads(await response.read())
            _read_lines(record, [(time.perf_counter() - origin, {**body, "finished": True})], stream=False)
            return
        lines = []  # (arrival time, message): all read first, interpreted after
        async for line in response.content:  # one NDJSON line at a time, as it arrives
            if line.strip():
                lines.append((time.perf_counter() - origin, json.loads(line)))
        _read_lines(record, lines, stream=True)


def _read_lines(record: RequestRecord, lines: list[tuple[float, dict]], stream: bool) -> None:
    record.error = next((m["error"] for _, m in reversed(lines) if "error" in m), None)
    pieces = [(t, m.get("token_ids") or [], m.get("text") or "") for t, m in lines if "error" not in m]
    if not pieces:
        return
    last = next(m for _, m in reversed(lines) if "error" not in m)
    for t, ids, text in pieces:
        record.text += text
        if ids:
            record.token_ids += ids
            record.chunk_times.append(t)
            record.chunk_tokens.append(len(ids))
    record.output_tokens = len(record.token_ids)
    record.first_token_time = record.chunk_times[0] if stream and record.chunk_times else None
    record.worker, record.hot_adapter = last.get("worker"), last.get("hot_adapter")
    if last.get("finished"):
        record.finish_reason = last.get("finish_reason")
        record.prompt_tokens = (last.get("usage") or {}).get("prompt_tokens")


def _error_body(raw: bytes) -> dict | str:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw.decode(errors="replace")  # not ours: e.g. the proxy's plain-text 503
    return body.get("error", body) if isinstance(body, dict) else body


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(records: Sequence[RequestRecord], total_time: float) -> dict:
    """What a client saw, over every record of a run that took `total_time` seconds.

    Failed requests (anything not `ok`) count in `failed` (429s also in `num_429`) and in no latency.
    Inter-token latency: each chunk after a request's first spreads its gap to the previous chunk evenly over
    the tokens it carried (one sample per token)."""
    done = [r for r in records if r.ok]
    ttfts = [r.ttft for r in done if r.ttft is not None]
    itl = [gap / n for r in done for gap, n in zip(np.diff(r.chunk_times), r.chunk_tokens[1:]) for _ in range(n)]
    errors = sorted({json.dumps(r.error, sort_keys=True) for r in records if r.error is not None})
    return {
        "num_requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "num_429": sum(r.status == 429 for r in records),
        "error_samples": errors[:5],  # distinct error bodies, so a failed run says why
        "output_tokens": sum(r.output_tokens for r in done),
        "output_tokens_per_s": sum(r.output_tokens for r in done) / total_time,
        "total_tokens_per_s": sum(r.output_tokens + (r.prompt_tokens or 0) for r in done) / total_time,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p90": percentile(ttfts, 90),
        "ttft_p99": percentile(ttfts, 99),
        "inter_token_latency_p50": percentile(itl, 50),
        "inter_token_latency_p99": percentile(itl, 99),
    }
