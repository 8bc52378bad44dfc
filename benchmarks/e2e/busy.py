"""The GPU-busy fraction of decode steps: device time / wall time over a window of decode-only steps, from
torch.profiler, after the timed passes (the profiler's own host overhead stays out of them).

The configuration's requests are added again; once a step decodes only, the profiler watches the next
`steps` steps back to back, as generate() runs them: no synchronisation between steps, which would undo async
scheduling's overlap of one step's host work with the previous step's device work. The window is one
record_function range from a synchronised start to a synchronised end; busy = the union of the device activity
(kernels, copies, memsets) inside it, over its wall time. On the CPU there is no device: the same ratio is taken
over the time inside aten ops (what the CPU profiler sees)."""
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common.trace import TraceRequest
from benchmarks.e2e.measure import is_decode_only, submit
from benchmarks.engine.roofline import synchronize
from fair_lora import LLMEngine

STEP = "e2e_bench.step"
MIN_DECODE_STEPS = 3


def decode_busy(engine: LLMEngine, requests: list[TraceRequest], names: list[str], steps: int) -> dict:
    device = torch.device(engine.config.device)
    ids = list(submit(engine, requests, names))
    try:
        if not _reach_decode(engine, limit=20 * steps):
            return _none("no decode-only step before the requests finished")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        flags = []
        synchronize(device)
        with profile(activities=activities) as prof:
            with record_function(STEP):
                for _ in range(steps):
                    if not engine.has_unfinished():
                        break
                    engine.step()
                    flags.append(is_decode_only(engine))
                synchronize(device)
    finally:
        for request_id in ids:
            engine.abort(request_id)
    return busy_fraction(prof.profiler.kineto_results.events(), flags, device.type == "cuda")


def _reach_decode(engine: LLMEngine, limit: int) -> bool:
    for _ in range(limit):
        if not engine.has_unfinished():
            return False
        engine.step()
        if is_decode_only(engine):
            return True
    return False


def busy_fraction(events, flags: list[bool], cuda: bool) -> dict:
    """events: kineto events of the window; flags: whether each profiled step decoded only, in order."""
    window = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
              if e.name() == STEP and e.device_type() == DeviceType.CPU]
    if len(window) != 1:
        return _none(f"the profile holds {len(window)} window ranges, not one")
    if sum(flags) < MIN_DECODE_STEPS or sum(flags) < len(flags) / 2:
        return _none(f"{sum(flags)} decode-only steps among the {len(flags)} profiled")
    wanted = DeviceType.CUDA if cuda else DeviceType.CPU
    work = _union(sorted(
        (e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
        if e.device_type() == wanted and not e.is_user_annotation() and e.name() != STEP and e.duration_ns() > 0
    ))
    start, end = window[0]
    busy = _overlap(work, start, end)
    return {
        "busy": busy / (end - start),
        "source": "CUDA kernels, copies and memsets" if cuda else "CPU: time inside aten ops (no GPU)",
        "decode_steps": sum(flags),
        "profiled_steps": len(flags),
        "step_ms": (end - start) / len(flags) / 1e6,
        "device_ms": busy / len(flags) / 1e6,
    }


def _none(reason: str) -> dict:
    return {"busy": None, "reason": reason}


def _union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(intervals: list[tuple[int, int]], start: int, end: int) -> int:
    return sum(max(0, min(b, end) - max(a, start)) for a, b in intervals if a < end and b > start)
