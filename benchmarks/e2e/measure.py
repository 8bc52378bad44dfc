"""One configuration's engine and its timed passes, through the public API: all requests added at once, then
step() until done, as generate() does; every token is timed when step() returns it.

Start-up is timed in its parts: the constructor (warmup=False), adding the in-memory adapters, and the engine's
public warm_up() (kernels compiled, decode graphs captured, adapter slots loaded). A constructor given the same
adapters as directories runs that warm-up itself; in-memory adapters can only be added after it returns."""
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from benchmarks.common.trace import TraceRequest, prompt_token_ids
from benchmarks.e2e.counters import CompileCounter, graphs_captured, resident_adapters
from benchmarks.e2e.workload import Settings
from benchmarks.engine.measure import add_adapters
from benchmarks.engine.roofline import synchronize
from fair_lora import EngineConfig, LLMEngine, SamplingParams
from fair_lora.lora.adapter import LoRAAdapter

PERCENTILES = (50, 90, 99)


@contextmanager
def model_directory(s: Settings, parent: Path) -> Iterator[Path | None]:
    """A directory holding only config.json (dummy weights); None for the demo model."""
    if s.model_config is None:
        yield None
        return
    path = parent / "model"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(s.model_config))
    yield path


def engine_config(s: Settings, mode: str, model_dir: Path | None) -> EngineConfig:
    model = {} if model_dir is None else {"model": str(model_dir), "load_format": "dummy"}
    return EngineConfig(
        **model, device=s.device, dtype=s.dtype, mode=mode, auto_hot=True, warmup=False,
        max_num_seqs=s.max_num_seqs, max_adapter_slots=s.max_adapter_slots, max_model_len=s.max_model_len,
        max_num_batched_tokens=s.max_num_batched_tokens, max_lora_rank=max(s.rank, 1),
        async_scheduling=s.async_scheduling,
    )


def build_engine(
    s: Settings, mode: str, model_dir: Path | None, adapters: list[LoRAAdapter] | None
) -> tuple[LLMEngine, dict, list[LoRAAdapter]]:
    """The engine, its start-up record, and the in-memory adapters (created on this engine when `adapters` is
    None, then shared read-only with later engines)."""
    creates = adapters is None
    with CompileCounter() as compiles:
        start = time.perf_counter()
        engine = LLMEngine(engine_config(s, mode, model_dir))
        constructed = time.perf_counter()
        if creates:
            add_adapters(engine, (s.rank,) * s.num_adapters)
            adapters = [engine.pool.get(name) for name in engine.adapters()] if s.num_adapters else []
        else:
            for adapter in adapters:
                engine.add_adapter(adapter)
        added = time.perf_counter()
        engine.warm_up()
        ready = time.perf_counter()
    startup = {
        "seconds": ready - start,
        "constructor_s": constructed - start,
        "add_adapters_s": added - constructed,
        "created_adapters": creates,  # add_adapters_s includes drawing them and pinning their host copies
        "warmup_s": engine.warmup_seconds,
        "triton_compiles": compiles.count,
        "compiled_kernels": dict(compiles.kernels),
        "graphs_captured": graphs_captured(engine),
        "resident_adapters": resident_adapters(engine),
        "adapters": len(engine.adapters()),
        "memory_plan": engine.memory_plan.describe(),
        "kv_blocks": engine.memory_plan.num_blocks,
    }
    return engine, startup, adapters


def submit(engine: LLMEngine, requests: list[TraceRequest], names: list[str]) -> dict[str, float]:
    """Add every request (greedy, ignore_eos); returns each request id's time of adding."""
    added = {}
    for r in requests:
        adapter = None if r.adapter_index is None else names[r.adapter_index]
        params = SamplingParams(max_tokens=r.output_len, ignore_eos=True)
        added[engine.add_request(prompt_token_ids(r.prompt_len), adapter, params)] = time.perf_counter()
    return added


def is_decode_only(engine: LLMEngine) -> bool:
    step = engine.last_step
    return 0 < step.num_seqs == step.num_tokens


def run_pass(engine: LLMEngine, requests: list[TraceRequest], names: list[str]) -> dict:
    """Run the requests to completion; tokens/s, latency percentiles, hot share, and the start-up work
    (Triton compiles, graph captures, adapter slot loads, switches) that happened inside the pass."""
    device = torch.device(engine.config.device)
    graphs, resident, switches = graphs_captured(engine), resident_adapters(engine), len(engine.switches)
    preemptions = engine.num_preemptions
    with CompileCounter() as compiles:
        synchronize(device)
        start = time.perf_counter()
        added = submit(engine, requests, names)
        log = _drive(engine, added)
        synchronize(device)
        wall = time.perf_counter() - start
    new_switches = engine.switches[switches:]
    graphs_after = graphs_captured(engine)
    return {
        "wall_s": wall,
        **log.summary(wall),
        "prompt_tokens": sum(r.prompt_len for r in requests),
        "expected_output_tokens": sum(r.output_len for r in requests),
        "switches": len(new_switches),
        "switch_s": sum(seconds for _, seconds in new_switches),
        "switched_to": [name for name, _ in new_switches[:20]],
        "triton_compiles": compiles.count,
        "compiled_kernels": dict(compiles.kernels),
        "graphs_captured": None if graphs is None else graphs_after - graphs,
        "adapters_made_resident": max(resident_adapters(engine) - resident, 0),
        "preemptions": engine.num_preemptions - preemptions,
        # what the merge-gain trials measured and rejected (auto_hot engines): why a merge stayed or went
        "merge_gain": engine.stats().get("merge_gain"),
    }


class _PassLog:
    """Per request: first and last token times; per step: wall, tokens, corrected tokens, hot adapter."""

    def __init__(self, added: dict[str, float]) -> None:
        self.added, self.first, self.last = added, {}, {}
        self.gaps: list[float] = []
        self.steps: list[tuple[float, int, int, str | None, bool]] = []
        self.output_tokens, self.errors = 0, []

    def record(self, engine: LLMEngine, outputs: list, seconds: float, now: float) -> None:
        s = engine.last_step
        self.steps.append((seconds, s.num_tokens, s.num_corrected_tokens, s.hot_adapter, is_decode_only(engine)))
        for o in outputs:
            if o.error:
                self.errors.append(o.error)
            if not o.new_token_ids:
                continue
            self.output_tokens += len(o.new_token_ids)
            if o.request_id in self.last:
                self.gaps.append(now - self.last[o.request_id])
            else:
                self.first[o.request_id] = now - self.added[o.request_id]
            self.last[o.request_id] = now

    def summary(self, wall: float) -> dict:
        tokens = sum(t for _, t, _, _, _ in self.steps)
        hot = sum(t - c for _, t, c, h, _ in self.steps if h is not None)
        decode = [sec for sec, _, _, _, d in self.steps if d]
        return {
            "output_tokens": self.output_tokens,
            "tokens_per_s": self.output_tokens / wall,
            "steps": len(self.steps),
            "decode_steps": len(decode),
            "decode_step_ms": percentiles([1000 * x for x in decode]),
            "ttft_ms": percentiles([1000 * x for x in self.first.values()]),
            "per_token_ms": percentiles([1000 * x for x in self.gaps]),
            "hot_share": hot / tokens if tokens else 0.0,
            "hot_adapters": sorted({h for _, _, _, h, _ in self.steps if h is not None}),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
        }


def _drive(engine: LLMEngine, added: dict[str, float]) -> _PassLog:
    log = _PassLog(added)
    while engine.has_unfinished():
        start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        log.record(engine, outputs, now - start, now)
    return log


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in PERCENTILES}
    return {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
