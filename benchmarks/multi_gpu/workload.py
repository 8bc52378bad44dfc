"""The multi-GPU benchmark's traffic, and what it reads off a run's records and /stats timeline.

Every scenario is an S-LoRA trace (benchmarks/common/trace.py: seeded Poisson arrivals, input and output lengths
uniform in [lo, hi)); only the choice of adapter differs:
  two-hot     adapters 0 and 1 take 45% of the requests each; the other 10% are spread over the rest
  alpha0.02   S-LoRA's power law at alpha 0.02 (about 90% on adapter 0)
  alpha1      S-LoRA's power law at alpha 1 (uniform)
  shift       90% on adapter 2 for the first half of the trace, then 90% on adapter 3; the rest spread (not
              adapters 0 and 1, which the scenarios before it, on the same deployment, leave merged)
"""
import bisect
from dataclasses import replace

import numpy as np

from benchmarks.common.http_load import RequestRecord
from benchmarks.common.trace import TraceConfig, TraceRequest, generate_requests

SCENARIOS = ("two-hot", "alpha0.02", "alpha1", "shift")
TWO_HOT_SHARE = 0.45
SHIFT_SHARE = 0.9
SHIFT_FROM, SHIFT_TO = 2, 3


def hot_indices(scenario: str) -> tuple[int, ...]:
    """The adapters a scenario makes popular, in order (the shift's new one last)."""
    return {"two-hot": (0, 1), "shift": (SHIFT_FROM, SHIFT_TO)}.get(scenario, (0,))


def scenario_trace(scenario: str, num_adapters: int, rate: float, duration: float, lengths: tuple[int, int],
                   seed: int) -> list[TraceRequest]:
    alpha = float(scenario.removeprefix("alpha")) if scenario.startswith("alpha") else 1.0
    trace = generate_requests(TraceConfig(num_adapters, alpha, rate, 1.0, duration, lengths, lengths), seed)
    if scenario.startswith("alpha"):
        return trace
    if scenario not in SCENARIOS or num_adapters < 5:
        raise ValueError(f"scenario {scenario!r} with {num_adapters} adapters: choose one of {SCENARIOS}, >= 5")
    # A second stream, so arrivals and lengths stay those of the power-law scenarios with the same seed.
    rng = np.random.RandomState(seed + 1)
    u = rng.random_sample(len(trace))
    if scenario == "two-hot":
        spread = rng.randint(2, num_adapters, len(trace))
        index = np.where(u < TWO_HOT_SHARE, 0, np.where(u < 2 * TWO_HOT_SHARE, 1, spread))
    else:
        others = np.array([i for i in range(num_adapters) if i not in (SHIFT_FROM, SHIFT_TO)])
        spread = others[rng.randint(0, len(others), len(trace))]
        hot = np.array([SHIFT_FROM if r.req_time < duration / 2 else SHIFT_TO for r in trace])
        index = np.where(u < SHIFT_SHARE, hot, spread)
    return [replace(r, adapter_index=int(i)) for r, i in zip(trace, index)]


def _sample_at(timeline: list[dict], t: float, after: bool) -> dict | None:
    """The last good /stats sample at or before t (after=False), or the first at or after it."""
    good = [s for s in timeline if "hot" in s]
    times = [s["t"] for s in good]
    i = bisect.bisect_left(times, t) if after else bisect.bisect_right(times, t) - 1
    return good[i] if 0 <= i < len(good) else None


def routing_hits(records: list[RequestRecord], timeline: list[dict], since_s: float = 0.0) -> dict:
    """Of the completed requests sent from `since_s` on whose adapter some worker had merged both at the /stats
    sample before and at the one after the request was sent (the plan held still around it), the share that
    was admitted by a worker that had it merged."""
    eligible = hits = 0
    for r in records:
        if not r.ok or r.adapter is None or r.send_time < since_s:
            continue
        before, after = _sample_at(timeline, r.send_time, False), _sample_at(timeline, r.send_time, True)
        if before and after and r.adapter in before["hot"] and r.adapter in after["hot"]:
            eligible += 1
            hits += r.hot_adapter == r.adapter
    return {"eligible": eligible, "hits": hits, "hit_rate": hits / eligible if eligible else None}


def merged_timeline(timeline: list[dict]) -> list[list[tuple[float, str | None]]]:
    """Per worker (by rank), each change of its merged adapter: (time, adapter)."""
    changes: list[list[tuple[float, str | None]]] = []
    for sample in timeline:
        for rank, hot in enumerate(sample.get("hot", [])):
            while len(changes) <= rank:
                changes.append([])
            if not changes[rank] or changes[rank][-1][1] != hot:
                changes[rank].append((sample["t"], hot))
    return changes


def switches_per_worker(timeline: list[dict]) -> list[int | None]:
    """Merge switches each worker made during the run (its counter's last reading minus its first)."""
    readings = [s["switches"] for s in timeline if s.get("switches")]
    if not readings:
        return []
    first, last = readings[0], readings[-1]
    return [None if a is None or b is None else b - a for a, b in zip(first, last)]


def merged_after(timeline: list[dict], adapter: str, since_s: float) -> float | None:
    """Seconds from `since_s` until a /stats sample first shows `adapter` merged on some worker; None: never."""
    for sample in timeline:
        if sample["t"] >= since_s and adapter in sample.get("hot", []):
            return sample["t"] - since_s
    return None
