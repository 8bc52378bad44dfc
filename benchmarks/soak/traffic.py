"""The soak's mixed workload over HTTP: whole and streamed /generate requests (benchmarks/http_load.py), streams
the client cuts after their first line, hostile bodies, and adapter loads and unloads. Every request ends as one
Outcome, so that the soak can account for each."""
import asyncio
import json
import random
import time
from dataclasses import dataclass

import aiohttp

from benchmarks.common.http_load import LoadRequest, RequestRecord, run_load

ADAPTERS = [f"adapter-{i}" for i in range(6)]
HOSTILE = [  # (path, raw body): each must get a 4xx, never a 5xx
    ("/v1/completions", '{"model": "adapter-1", "prompt": "\\ud800", "max_tokens": 4}'),
    ("/v1/completions", '{"model": "adapter-1", "prompt": }'),
    ("/v1/completions", '{"model": "adapter-1", "prompt": "x", "max_tokens": 99999999999}'),
    ("/v1/completions", '{"model": "no-such-adapter", "prompt": "x"}'),
    ("/v1/chat/completions", '{"model": "adapter-2", "messages": [{"role": "tool", "content": "x"}]}'),
    ("/generate", '{"prompt": "x", "stop": ["\\udc00"], "stream": true}'),
    ("/generate", '{"prompt": [1, 2, true]}'),
    ("/v1/completions", json.dumps({"model": "adapter-0", "prompt": "x" * 5000, "max_tokens": 1})),
    ("/v1/load_lora_adapter", '{"lora_name": "x", "lora_path": "/etc"}'),
]
MIX = {"whole": 0.45, "stream": 0.35, "cut": 0.1, "hostile": 0.1}


@dataclass
class Outcome:
    kind: str  # whole, stream, cut (a stream the client ends after its first line), hostile, admin
    sent: float  # seconds after the soak's start
    status: int | None  # None: never answered (lost)
    latency: float | None = None
    tokens: int = 0
    error: str | None = None  # the error message, for 4xx/5xx and stream error lines


def plan(duration_s: float, rate: float, seed: int) -> list[tuple[float, str, int]]:
    """Poisson arrivals at `rate` requests/s: (offset, kind, index), kinds drawn from MIX."""
    rng, at, items = random.Random(seed), 0.0, []
    kinds, weights = list(MIX), list(MIX.values())
    while True:
        at += rng.expovariate(rate)
        if at >= duration_s:
            return items
        items.append((at, rng.choices(kinds, weights)[0], len(items)))


def load_request(index: int, max_tokens: int) -> LoadRequest:
    return LoadRequest(f"soak request {index}", ADAPTERS[index % 5 if index % 3 else 0], max_tokens)


def from_record(kind: str, record: RequestRecord) -> Outcome:
    error = record.error if isinstance(record.error, str) or record.error is None else record.error.get("message")
    status = record.status
    if status == 200 and record.error is not None:  # an error line after the headers: a failure after tokens
        status = (record.error.get("code") if isinstance(record.error, dict) else None) or 500
    return Outcome(kind, record.send_time, status, record.latency, record.output_tokens, error)


async def generate(url: str, arrivals: list[tuple[float, int]], stream: bool, origin: float, max_tokens: int) -> list[Outcome]:
    requests = [load_request(i, max_tokens) for _, i in arrivals]
    records = await run_load(url, requests, arrivals=[a for a, _ in arrivals], stream=stream, progress=False,
                             origin=origin, timeout_s=300.0)
    return [from_record("stream" if stream else "whole", r) for r in records]


async def raw(client: aiohttp.ClientSession, url: str, kind: str, path: str, body: str, origin: float,
              cut: bool = False) -> Outcome:
    sent = time.perf_counter() - origin
    try:
        async with client.post(url + path, data=body, headers={"content-type": "application/json"}) as response:
            if cut and response.status == 200:
                await response.content.readline()  # one line, then the client hangs up
                return Outcome(kind, sent, 200, time.perf_counter() - origin - sent)
            text = await response.text()
            error = None if response.status == 200 else text[:300]
            return Outcome(kind, sent, response.status, time.perf_counter() - origin - sent, error=error)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return Outcome(kind, sent, None, error=f"{type(error).__name__}: {error}")


async def others(url: str, arrivals: list[tuple[float, str, int]], origin: float) -> list[Outcome]:
    """Cut streams and hostile bodies, each at its arrival offset."""
    timeout = aiohttp.ClientTimeout(total=300.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as client:
        tasks = []
        for at, kind, index in arrivals:
            await asyncio.sleep(max(origin + at - time.perf_counter(), 0))
            if kind == "cut":
                body = json.dumps({**load_request(index, 64).body(stream=True)})
                tasks.append(asyncio.create_task(raw(client, url, "cut", "/generate", body, origin, cut=True)))
            else:
                path, body = HOSTILE[index % len(HOSTILE)]
                tasks.append(asyncio.create_task(raw(client, url, "hostile", path, body, origin)))
        return list(await asyncio.gather(*tasks))


async def adapter_churn(url: str, path: str, duration_s: float, origin: float, every_s: float = 8.0) -> list[Outcome]:
    """Load an adapter at runtime, unload it a few seconds later, again and again."""
    outcomes = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120.0)) as client:
        turn = 0
        while time.perf_counter() - origin + every_s < duration_s:
            await asyncio.sleep(every_s / 2)
            name = f"churn-{turn}"
            load = json.dumps({"lora_name": name, "lora_path": path})
            outcomes.append(await raw(client, url, "admin", "/v1/load_lora_adapter", load, origin))
            await asyncio.sleep(every_s / 2)
            outcomes.append(await raw(client, url, "admin", "/v1/unload_lora_adapter", json.dumps({"lora_name": name}), origin))
            turn += 1
    return outcomes
