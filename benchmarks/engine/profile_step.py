"""Where a decode step's time goes on the GPU: host phases timed around device syncs, and the profiler's top ops.

    python -m benchmarks.engine.profile_step [--batch 32] [--mix base|hot|cold|slora|fair91]

base: no adapters; hot: every request the merged adapter; cold: 10 adapters, the first merged; slora: 10
adapters, nothing merged; fair91: 91% of requests the merged adapter, every 11th a distinct other one. Also times each captured CUDA graph's replay alone (device time of the step).
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common.report import REPO
from benchmarks.engine.measure import add_adapters, adapter_name
from fair_lora import EngineConfig, LLMEngine, SamplingParams


def build(batch: int, mode: str) -> LLMEngine:
    model_dir = Path(tempfile.mkdtemp())
    shutil.copy(REPO / "configs" / "llama-2-7b.json", model_dir / "config.json")
    engine = LLMEngine(EngineConfig(model=str(model_dir), load_format="dummy", device="cuda", dtype="bfloat16",
                                    mode=mode, auto_hot=False, max_adapter_slots=100, max_lora_rank=16,
                                    max_num_seqs=batch, max_num_batched_tokens=8192, num_kv_blocks=batch * 40,
                                    warmup=False, async_scheduling=False))  # the phases below are timed one by one
    add_adapters(engine, (16,) * 100)
    return engine


def timed(label: str, fn, table: dict):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    table[label] = table.get(label, 0.0) + (time.perf_counter() - start) * 1e3
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mix", choices=("base", "hot", "cold", "slora", "fair91"), default="base")
    a = p.parse_args()
    engine = build(a.batch, "slora" if a.mix in ("base", "slora") else "fair")
    names = [None] * a.batch if a.mix == "base" else [adapter_name(0)] * a.batch
    if a.mix in ("cold", "slora"):
        names = [adapter_name(i % 10) for i in range(a.batch)]
    if a.mix == "fair91":
        names = [adapter_name(0 if i % 11 else 1 + i // 11 % 99) for i in range(a.batch)]
    if a.mix in ("hot", "cold", "fair91"):
        engine.set_hot_adapter(adapter_name(0))
    for i, name in enumerate(names):
        engine.add_request([(7 * i + j) % 32000 for j in range(256)], name, SamplingParams(max_tokens=64, ignore_eos=True))
    for _ in range(8):
        engine.step()
    phases: dict[str, float] = {}
    steps = 10
    for _ in range(steps):
        timed("step (total)", engine.step, phases)
    for _ in range(steps):  # the runner alone: prepare + forward (graph replay) on the same scheduled batch shape
        out = engine.scheduler.schedule()
        slots = [engine.pool.slot_of[s.seq.adapter] if s.seq.adapter else -1 for s in out.scheduled]
        hot = engine.hot_switch.slot()
        batch = timed("prepare", lambda: engine.runner.prepare(out.scheduled, slots, engine.pool.slot_scales, hot), phases)
        timed("runner.run", lambda: engine.runner.run(out.scheduled, slots, engine.pool.slot_scales, hot), phases)
        timed("model eager", lambda: engine.model(*batch), phases)
    for key, graph in (engine.runner.graphs.graphs.items() if engine.runner.graphs else ()):
        for _ in range(steps):
            timed(f"graph replay {key}", graph.replay, phases)
    print(json.dumps({k: round(v / steps, 3) for k, v in phases.items()}, indent=1))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=24))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
