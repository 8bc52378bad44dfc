"""The records a benchmark run writes, one per measurement: what ran, its times, and its roofline."""
import statistics

from benchmarks.engine.measure import DecodeTiming, MergeTiming, adapter_name
from benchmarks.engine.report import median_ms
from benchmarks.engine.roofline import Calibration, ModelShape, correction, decode_cost, prefill_cost
from benchmarks.engine.workload import AdapterSet, Mix, most_frequent
from fair_lora import PopularityConfig

Adapters = list[int | None]  # the adapter index of each sequence of a batch; None: the base model


def engine_of(mode_or_case: str) -> str:
    """The engine that serves a mode or prefill case: base requests run on the slora engine."""
    return "fair" if mode_or_case.startswith("fair") else "slora"


def fair_hot(mode: str, adapters: Adapters) -> int | None:
    """fair merges what its own policy would hold merged at steady state: the top adapter once its share
    reaches the enter share; below that nothing is merged and fair runs exactly like slora."""
    if mode != "fair":
        return None
    top, share = most_frequent(adapters)
    return top if share >= PopularityConfig().enter_share else None


def decode_record(shape: ModelShape, cal: Calibration, mode: str, aset: AdapterSet, graphs: bool | None,
                  mix: Mix | None, adapters: Adapters, hot: int | None, t: DecodeTiming) -> dict:
    median = statistics.median(t.seconds)
    floor, bound = decode_cost(shape, adapters, t.contexts, hot, aset.ranks).floor(cal)
    used = [a for a in adapters if a is not None]
    return {
        "mode": mode,
        "adapter_set": None if mix is None else aset.name,
        "graphs": graphs,
        "batch": len(adapters),
        "mix": None if mix is None else mix.name,
        "alpha": None if mix is None else mix.alpha,
        "hot": None if hot is None else adapter_name(hot),
        "hot_share": most_frequent(used)[1] if used else 1.0,  # the most frequent adapter's share of the batch
        "distinct_adapters": len(set(used)),
        "adapters_touched": len(correction(adapters, hot)[1]),  # by the LoRA work, as the roofline counts them
        "context_mean": statistics.mean(t.contexts),
        "step_ms": 1000 * median,
        "step_ms_min": 1000 * min(t.seconds),
        "step_ms_max": 1000 * max(t.seconds),
        "tokens_per_s": len(adapters) / median,
        "roofline_ms": 1000 * floor,
        "roofline_bound": bound,
        "roofline_pct": 100 * floor / median,
        "corrected_tokens": t.corrected_tokens,
    }


def prefill_record(shape: ModelShape, cal: Calibration, tokens: int, aset: AdapterSet, case: str,
                   adapter: int | None, hot: int | None, seconds: list[float]) -> dict:
    name, hot_name = (None if a is None else adapter_name(a) for a in (adapter, hot))
    ms = median_ms(seconds)
    floor, bound = prefill_cost(shape, tokens, adapter, hot, aset.ranks).floor(cal)
    return {"case": case, "mode": engine_of(case), "adapter": name, "hot": hot_name, "tokens": tokens, "ms": ms,
            "tokens_per_s": 1000 * tokens / ms, "roofline_ms": 1000 * floor, "roofline_bound": bound,
            "roofline_pct": 100 * 1000 * floor / ms}


def merge_record(t: MergeTiming, rank: int) -> dict:
    return {"projections": t.projections, "rank": rank, "merge_ms": median_ms(t.merge),
            "switch_ms": median_ms(t.switch), "restore_ms": median_ms(t.restore), "switches_timed": len(t.switch),
            "bit_exact": t.bit_exact, "merged_differs": t.merged_differs}
