"""The serving benchmark's requests and its engine side: the same requests as the HTTP side sends, through
LLMEngine's public API with the same number in flight, timed as a client would time them.

A case is a mode and an adapter mix: `base` (no adapter), `fair-<alpha>` and `slora-<alpha>` (adapters drawn
with S-LoRA's power law over N adapters, seed 42). Each request has a fixed prompt and output length
(greedy, ignore_eos), so both sides compute exactly the same tokens.
"""
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from benchmarks.common.http_load import LoadRequest, RequestRecord
from benchmarks.common.trace import SEED, prompt_token_ids
from fair_lora import LLMEngine, SamplingParams


@dataclass(frozen=True)
class Case:
    name: str  # "base", "fair-0.02", "slora-1"
    mode: str  # the engine's mode: "fair" or "slora"
    alpha: float | None  # None: every request on the base model

    @classmethod
    def parse(cls, text: str) -> "Case":
        if text == "base":
            return cls("base", "slora", None)
        mode, _, alpha = text.partition("-")
        if mode not in ("fair", "slora") or not alpha:
            raise ValueError(f"a case is 'base', 'fair-<alpha>' or 'slora-<alpha>', got {text!r}")
        return cls(text, mode, float(alpha))


def requests_for(case: Case, adapters: list[str], count: int, prompt_len: int, output_len: int) -> list[LoadRequest]:
    """`count` requests; adapter i is floor(N · power(alpha)) as S-LoRA draws it (alpha 1: uniform)."""
    if case.alpha is None or not adapters:
        names: list[str | None] = [None] * count
    else:
        draws = np.random.RandomState(SEED).power(case.alpha, count)
        names = [adapters[min(int(d * len(adapters)), len(adapters) - 1)] for d in draws]
    prompts = [prompt_token_ids(prompt_len - 1) + [4 + i % 200] for i in range(count)]  # no two prompts alike
    return [LoadRequest(p, a, output_len) for p, a in zip(prompts, names)]


def hot_share(requests: list[LoadRequest]) -> float:
    """The most frequent adapter's share of the requests (what a merge can serve without correction)."""
    names = [r.adapter for r in requests if r.adapter is not None]
    if not names:
        return 0.0
    _, counts = np.unique(names, return_counts=True)
    return float(counts.max() / len(requests))


def engine_closed_loop(engine: LLMEngine, requests: list[LoadRequest], concurrency: int) -> tuple[list[RequestRecord], float]:
    """Keep `concurrency` requests in the engine until all are done; each request's tokens are timed when
    step() returns them. Returns the records (as the HTTP client records them) and the wall time."""
    pending, live, records = deque(range(len(requests))), {}, [None] * len(requests)
    origin = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency:
            i = pending.popleft()
            r = requests[i]
            params = SamplingParams(max_tokens=r.max_tokens, ignore_eos=True)
            request_id = engine.add_request(r.prompt, r.adapter, params)
            live[request_id] = records[i] = RequestRecord(i, r.adapter, time.perf_counter() - origin, status=200)
        outputs = engine.step()
        now = time.perf_counter() - origin
        for out in outputs:
            record = live[out.request_id]
            if out.new_token_ids:
                record.chunk_times.append(now)
                record.chunk_tokens.append(len(out.new_token_ids))
                record.output_tokens += len(out.new_token_ids)
            if out.finished:
                record.first_token_time = record.chunk_times[0] if record.chunk_times else None
                record.end_time, record.finish_reason = now, out.finish_reason
                record.prompt_tokens = len(out.prompt_token_ids)
                del live[out.request_id]
    return records, time.perf_counter() - origin
