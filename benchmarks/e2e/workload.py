"""The end-to-end benchmark's settings, configurations and requests.

A configuration is a mode, an adapter popularity and a length workload; its requests are drawn as S-LoRA's
trace.py draws them (seed 42): adapter floor(N · power(alpha)), input and output lengths uniform in their
ranges. All requests are added at once, as generate() adds them, so arrival times are not used.

Configurations that a ratio compares run back to back (one engine at a time, the GPU is shared and drifts):
fair and slora at the largest alpha, then base, then fair and slora at the smallest alpha, then the others.
"""
import math
from collections import Counter
from dataclasses import dataclass

from benchmarks.common.trace import TraceConfig, TraceRequest, generate_requests

MODES = ("base", "slora", "fair")


@dataclass(frozen=True)
class Lengths:
    name: str  # "fixed" (128 in, 128 out) or "mix" (S-LoRA's uniform length mix)
    input_range: tuple[int, int]  # [lo, hi)
    output_range: tuple[int, int]


@dataclass(frozen=True)
class Settings:
    """What every engine of a run gets, and how much work each configuration does."""

    tiny: bool
    model: str  # what the model is, for the report
    model_config: dict | None  # config.json of the dummy-weight model; None: the embedded demo (its own adapters)
    device: str
    dtype: str
    num_adapters: int  # random in-memory adapters on all seven projections (0 with the demo)
    rank: int
    requests: int
    max_num_seqs: int
    max_adapter_slots: int
    max_model_len: int
    max_num_batched_tokens: int
    lengths: dict[str, Lengths]
    profile_steps: int  # steps the profiler watches for the GPU-busy fraction of decode steps
    async_scheduling: bool | None = None  # None: the engine's default (on for CUDA)


GPU_LENGTHS = {"fixed": Lengths("fixed", (128, 129), (128, 129)), "mix": Lengths("mix", (8, 512), (8, 512))}
TINY_LENGTHS = {"fixed": Lengths("fixed", (12, 13), (4, 5)), "mix": Lengths("mix", (4, 24), (2, 8))}


@dataclass(frozen=True)
class Configuration:
    mode: str  # "base" (requests without an adapter, on a slora engine), "slora" or "fair" (auto_hot)
    alpha: float | None  # None: base
    lengths: Lengths
    hot_share: float | None = None  # the sweep's target share of the most popular adapter (alpha drawn from it)

    @property
    def engine_mode(self) -> str:
        return "slora" if self.mode == "base" else self.mode

    @property
    def name(self) -> str:
        if self.hot_share is not None:
            return f"{self.mode} hot={self.hot_share:g} ({self.lengths.name})"
        alpha = "" if self.alpha is None else f" alpha={self.alpha:g}"
        return f"{self.mode}{alpha} ({self.lengths.name})"


def alpha_for_hot_share(share: float, num_adapters: int) -> float:
    """The power-law alpha whose most popular adapter takes `share` of the requests: adapter 0 is drawn when
    floor(N · U^(1/alpha)) = 0, with probability (1/N)^alpha. A share of 1 is alpha → 0 (every draw adapter 0)."""
    return max(math.log(share) / math.log(1.0 / num_adapters), 1e-9)


def sweep_configurations(
    modes: tuple[str, ...], shares: tuple[float, ...], num_adapters: int, lengths: Lengths
) -> list[Configuration]:
    """The hot-share sweep: fair and slora at each share, most skewed first (base runs with the alpha list)."""
    return [Configuration(m, alpha_for_hot_share(share, num_adapters), lengths, share)
            for share in sorted(set(shares), reverse=True) for m in ("fair", "slora") if m in modes]


def configurations(
    modes: tuple[str, ...], alphas: tuple[float, ...], lengths: list[Lengths], mix_alphas: tuple[float, ...]
) -> list[Configuration]:
    """Every configuration of the run, in the order they run: fixed lengths at `alphas`, the mix at `mix_alphas`."""
    out = []
    for workload in lengths:
        chosen = alphas if workload.name == "fixed" else mix_alphas
        out += [Configuration(m, a, workload) for m, a in _order(modes, tuple(sorted(set(chosen))))]
    return out


def _order(modes: tuple[str, ...], alphas: tuple[float, ...]) -> list[tuple[str, float | None]]:
    """(mode, alpha) pairs: fair and slora at the largest alpha, base, then the smallest alpha, then the rest."""
    def pair(alpha: float) -> list[tuple[str, float | None]]:
        return [(m, alpha) for m in ("fair", "slora") if m in modes]

    largest, smallest, middle = alphas[-1:], alphas[:1] if len(alphas) > 1 else (), alphas[1:-1]
    order = [p for a in largest for p in pair(a)]
    order += [("base", None)] if "base" in modes else []
    return order + [p for a in (*smallest, *middle) for p in pair(a)]


def requests_for(config: Configuration, num_adapters: int, count: int) -> list[TraceRequest]:
    trace = TraceConfig(
        num_adapters=0 if config.alpha is None else num_adapters, alpha=config.alpha or 1.0, req_rate=count, cv=1.0,
        duration=1.0, input_range=config.lengths.input_range, output_range=config.lengths.output_range,
    )
    return generate_requests(trace)


def workload_summary(requests: list[TraceRequest]) -> dict:
    """The most frequent adapter's share of the requests (what one merge can serve uncorrected), and more."""
    counts = Counter(r.adapter_index for r in requests if r.adapter_index is not None)
    top = counts.most_common(1)[0][1] if counts else 0
    return {
        "requests": len(requests),
        "top_adapter_share": top / len(requests),
        "distinct_adapters": len(counts),
        "prompt_tokens": sum(r.prompt_len for r in requests),
        "output_tokens": sum(r.output_len for r in requests),
    }
