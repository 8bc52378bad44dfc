"""The GPU-busy fraction of decode steps: device time / wall time over a window of decode-only steps, from
torch.profiler, after the timed passes (the profiler's own host overhead stays out of them).

The configuration's requests are added again; once a step decodes only, the profiler watches the next
`steps` steps, each inside a record_function range that ends after a device synchronize. For each decode-only
step, busy = the union of its device activity (kernels, copies, memsets) within the step's range. On the CPU
there is no device: the same ratio is taken over the time inside aten ops (what the CPU profiler sees)."""
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.e2e.measure import is_decode_only, submit
from benchmarks.engine.roofline import synchronize
from benchmarks.common.trace import TraceRequest
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
        with profile(activities=activities) as prof:
            for _ in range(steps):
                if not engine.has_unfinished():
                    break
                with record_function(STEP):
                    engine.step()
                    synchronize(device)
                flags.append(is_decode_only(engine))
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
    ranges = sorted(
        (e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
        if e.name() == STEP and e.device_type() == DeviceType.CPU
    )
    if len(ranges) != len(flags):
        return _none(f"the profile holds {len(ranges)} step ranges for {len(flags)} steps")
    wanted = DeviceType.CUDA if cuda else DeviceType.CPU
    work = _union(sorted(
        (e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
        if e.device_type() == wanted and not e.is_user_annotation() and e.name() != STEP and e.duration_ns() > 0
    ))
    decode = [r for r, flag in zip(ranges, flags) if flag]
    if len(decode) < MIN_DECODE_STEPS:
        return _none(f"{len(decode)} decode-only steps among the {len(flags)} profiled (fewer than {MIN_DECODE_STEPS})")
    wall = sum(end - start for start, end in decode)
    busy = sum(_overlap(work, start, end) for start, end in decode)
    return {
        "busy": busy / wall,
        "source": "CUDA kernels, copies and memsets" if cuda else "CPU: time inside aten ops (no GPU)",
        "decode_steps": len(decode),
        "profiled_steps": len(flags),
        "step_ms": wall / len(decode) / 1e6,
        "device_ms": busy / len(decode) / 1e6,
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
