"""Synthetic request traces, drawn exactly as S-LoRA's benchmarks/common/trace.py (`generate_requests`) draws them.

One RandomState seeded with 42 (the stream numpy's global `np.random.seed(42)` gives), and the draws in S-LoRA's
order, each for all n = int(rate · duration) requests at once:
  adapter  floor(N · power(alpha))    alpha 1: uniform over the N adapters; smaller alpha: skewed to low indices
  input    randint(lo, hi)            uniform in [lo, hi)
  output   randint(lo, hi)
  gaps     gamma(1/cv², cv²/rate)     cv 1: a Poisson process; the i-th request arrives at gap_0 + … + gap_i
Requests are greedy with ignore_eos, so each produces exactly its output length. S-LoRA's prompt is the text
"Hello " × input length; here it is `input length` token ids (PROMPT_TOKEN repeated), so the prompt has exactly
the requested number of tokens under any tokenizer, and models without one (dummy weights) take it too.
"""
from dataclasses import asdict, dataclass

import numpy as np

SEED = 42
# Byte 'a' in both the demo's byte-level vocabulary and Llama's SentencePiece byte fallback (ids 3 + byte).
PROMPT_TOKEN = 3 + ord("a")


@dataclass(frozen=True)
class TraceConfig:
    """One configuration of a suite: S-LoRA's BenchmarkConfig fields."""

    num_adapters: int  # 0: every request goes to the base model (S-LoRA's num_adapters == 0)
    alpha: float
    req_rate: float  # requests per second, over the whole trace
    cv: float  # coefficient of variation of the inter-arrival gaps
    duration: float  # seconds
    input_range: tuple[int, int]  # [lo, hi)
    output_range: tuple[int, int]

    def scaled(self, factor: float) -> "TraceConfig":
        """The same configuration over factor · duration (a shorter trace for smoke runs)."""
        return TraceConfig(**{**asdict(self), "duration": self.duration * factor})

    def to_dict(self) -> dict:
        return {**asdict(self), "input_range": list(self.input_range), "output_range": list(self.output_range)}


@dataclass(frozen=True)
class TraceRequest:
    req_id: int
    adapter_index: int | None  # into the configuration's adapter list; None: the base model
    prompt_len: int
    output_len: int
    req_time: float  # seconds after the trace's start


def generate_requests(config: TraceConfig, seed: int = SEED) -> list[TraceRequest]:
    rng = np.random.RandomState(seed)
    n = int(config.req_rate * config.duration)
    # S-LoRA draws the adapters of a base-model-only trace over one (unused) slot: same stream either way.
    slots = max(config.num_adapters, 1)
    # power() may return exactly 1.0, where S-LoRA would index past its list; that draw goes to the last adapter.
    index = np.minimum((rng.power(config.alpha, n) * slots).astype(int), slots - 1)
    input_lens = rng.randint(config.input_range[0], config.input_range[1], n)
    output_lens = rng.randint(config.output_range[0], config.output_range[1], n)
    shape, scale = 1 / (config.cv * config.cv), config.cv * config.cv / config.req_rate
    arrivals = np.cumsum(rng.gamma(shape, scale, n))
    return [
        TraceRequest(
            req_id=i,
            adapter_index=int(index[i]) if config.num_adapters else None,
            prompt_len=int(input_lens[i]),
            output_len=int(output_lens[i]),
            req_time=float(arrivals[i]),
        )
        for i in range(n)
    ]


def prompt_token_ids(length: int) -> list[int]:
    return [PROMPT_TOKEN] * length
