"""Runs a Plan: calibration, then the engine and baseline phases in order of importance. Every phase writes the
results so far, and a failed or late measurement becomes a note, so a run cut short still reports."""
import functools
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.engine_measure import (
    EngineSettings,
    adapter_name,
    graphs_flag_present,
    make_engine,
    measure_decode,
    measure_merge,
    measure_prefill,
)
from benchmarks.hf_peft_baseline import PeftBaseline
from benchmarks.plan import Plan, output_stem
from benchmarks.report import median_ms, progress_line
from benchmarks.run_output import run_meta, write_outputs
from benchmarks.roofline import Calibration, ModelShape, calibrate, correction, decode_cost, prefill_cost
from benchmarks.workload import AdapterSet, Mix, mixed_set, most_frequent, uniform_set
from fair_lora import PopularityConfig

Adapters = list[int | None]  # the adapter index of each sequence of a batch; None: the base model


class Bench:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.device = torch.device(plan.device)
        self.dtype = getattr(torch, plan.dtype)
        self.shape = ModelShape.from_config(plan.config, self.dtype.itemsize)
        sets = {
            "uniform": uniform_set(plan.num_adapters, plan.rank),
            "mixed": mixed_set(plan.num_adapters, plan.mixed_ranks),
        }
        self.sets = [sets[name] for name in plan.adapter_sets]
        flag = graphs_flag_present()
        self.graphs = (plan.graphs != "off" and self.device.type == "cuda") if flag else None  # the main sweep's
        self.graphs_off_too = self.graphs is True and plan.graphs == "both"
        self.model_dir = Path()
        self.rng = np.random.default_rng(0)
        self.start = time.perf_counter()
        self.cal = Calibration(1.0, 1.0)
        self.notes = [] if flag else ["the engine has no cuda_graphs flag: every step ran eagerly"]
        self.skipped: list[str] = []
        meta = run_meta(plan, self.device, self.shape, self.sets, flag, self.graphs)
        self.results = {"meta": meta, "calibration": {}, "decode": [], "prefill": [], "merge": None}
        self.stem = output_stem(self.results["meta"]["date"], self.results["meta"]["device_name"], plan.tiny)

    def run(self) -> dict[str, Path]:
        p = self.plan
        first, *others = self.sets
        with tempfile.TemporaryDirectory() as tmp:
            self.model_dir = Path(tmp)
            (self.model_dir / "config.json").write_text(json.dumps(p.config))
            self._calibrate()
            for mode in ("slora", "fair"):
                self._engine_phase(mode, first, self.graphs, p.batches, p.mixes, main=True)
            self._peft_phase(first)
            for mode in ("slora", "fair") if self.graphs_off_too else ():
                self._engine_phase(mode, first, False, p.key_batches, p.graphs_off_mixes, main=False)
            for aset in others:
                for mode in ("slora", "fair"):
                    self._engine_phase(mode, aset, self.graphs, p.key_batches, p.mixed_mixes, main=False)
        return write_outputs(self.results, self.plan, self.stem, self._notes(), self._elapsed(), True, self._log)

    # ---- phases ----------------------------------------------------------------------------------------

    def _calibrate(self) -> None:
        p = self.plan
        self.cal = calibrate(self.device, self.dtype, p.gemm_size, p.copy_bytes)
        self.results["calibration"] = {
            "matmul_tflops": self.cal.matmul_flops / 1e12,
            "copy_gbps": self.cal.copy_bandwidth / 1e9,
            "gemm": f"{p.gemm_size}³ {p.dtype}",
            "copy_bytes": p.copy_bytes,
        }
        c = self.results["calibration"]
        self._log(f"calibration: GEMM {c['matmul_tflops']:.4g} TFLOP/s, copy {c['copy_gbps']:.4g} GB/s")

    def _engine_phase(self, mode: str, aset: AdapterSet, graphs: bool | None, batches, mixes, main: bool) -> None:
        """One engine over batches × mixes (the slora engine also runs base: requests without an adapter); the
        main phase adds the prefills and, for fair, the merge."""
        p = self.plan
        base = mode == "slora" and "base" in p.modes and aset is self.sets[0]
        wanted = mode in p.modes or base
        decode, prefill = "decode" in p.workloads and wanted, main and "prefill" in p.workloads and wanted
        merge = main and mode == "fair" and "fair" in p.modes and "merge" in p.workloads
        label = f"{mode} engine ({aset.name}, graphs {_on(graphs)})"
        if not (decode or prefill or merge) or self._late(label):
            return
        s = EngineSettings(
            model_dir=self.model_dir, device=p.device, dtype=p.dtype, context=p.context, warmup=p.warmup, steps=p.steps,
            prefill_len=p.prefill_len, prefill_reps=p.prefill_reps, max_batch=max(batches), fill_budget=p.fill_budget,
        )
        engine = self._attempt(label, functools.partial(make_engine, s, mode, aset.ranks, graphs))
        if engine is None:
            return
        try:
            for batch in batches if decode else ():
                for mix in ([None] if base else []) + (list(mixes) if mode in p.modes else []):
                    self._decode(engine, s, "base" if mix is None else mode, aset, graphs, batch, mix)
            if prefill:
                self._prefills(engine, s, mode, aset, base)
            if merge:
                self._measure(f"merge   {aset.name} switches", "merge", functools.partial(self._merge, engine, aset))
        finally:
            del engine
            self._free()
            write_outputs(self.results, self.plan, self.stem, self._notes(), self._elapsed(), False, self._log)

    def _decode(
        self, engine, s: EngineSettings, mode: str, aset: AdapterSet, graphs: bool | None, batch: int, mix: Mix | None
    ) -> None:
        def measure() -> dict:
            adapters: Adapters = [None] * batch if mix is None else mix.adapters(batch, len(aset.ranks))
            top, share = most_frequent(adapters)
            # fair merges what its own policy would hold merged at steady state: the top adapter once its share
            # reaches the enter share; below that nothing is merged and fair runs exactly like slora.
            hot = top if mode == "fair" and share >= PopularityConfig().enter_share else None
            names = [None if a is None else adapter_name(a) for a in adapters]
            t = measure_decode(engine, s, names, None if hot is None else adapter_name(hot), self.rng)
            record = self._decode_record(mode, aset, graphs, mix, adapters, hot, t.seconds, t.contexts)
            return {**record, "corrected_tokens": t.corrected_tokens}

        label = f"{mode:7s} {'-' if mix is None else aset.name:6s} graphs={_on(graphs):3s} B={batch:<4d}"
        self._measure(f"{label} {mix.name if mix else ''}", "decode", measure)

    def _decode_record(self, mode: str, aset: AdapterSet, graphs, mix: Mix | None, adapters: Adapters, hot: int | None,
                       seconds: list[float], contexts: list[int]) -> dict:
        median = statistics.median(seconds)
        floor, bound = decode_cost(self.shape, adapters, contexts, hot, aset.ranks).floor(self.cal)
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
            "context_mean": statistics.mean(contexts),
            "step_ms": 1000 * median,
            "step_ms_min": 1000 * min(seconds),
            "step_ms_max": 1000 * max(seconds),
            "tokens_per_s": len(adapters) / median,
            "roofline_ms": 1000 * floor,
            "roofline_bound": bound,
            "roofline_pct": 100 * floor / median,
        }

    def _prefills(self, engine, s: EngineSettings, mode: str, aset: AdapterSet, base: bool) -> None:
        """slora engine: base (no adapter) and an adapter's request; fair engine: a hot and a cold request."""
        if mode == "fair":
            cases = [("fair-hot", 0, 0), ("fair-cold", 1, 0)]
        else:
            cases = ([("base", None, None)] if base else []) + ([("slora", 1, None)] if mode in self.plan.modes else [])
        for case, adapter, hot in cases:
            measure = functools.partial(self._prefill, engine, s, mode, aset, case, adapter, hot)
            self._measure(f"prefill {case:9s} {s.prefill_len} tokens", "prefill", measure)

    def _prefill(self, engine, s: EngineSettings, mode: str, aset: AdapterSet, case: str, adapter: int | None,
                 hot: int | None) -> dict:
        name, hot_name = (None if a is None else adapter_name(a) for a in (adapter, hot))
        ms = median_ms(measure_prefill(engine, s, name, hot_name, self.rng))
        floor, bound = prefill_cost(self.shape, s.prefill_len, adapter, hot, aset.ranks).floor(self.cal)
        return {"case": case, "mode": mode, "adapter": name, "hot": hot_name, "tokens": s.prefill_len, "ms": ms,
                "tokens_per_s": 1000 * s.prefill_len / ms, "roofline_ms": 1000 * floor, "roofline_bound": bound,
                "roofline_pct": 100 * 1000 * floor / ms}

    def _merge(self, engine, aset: AdapterSet) -> dict:
        t = measure_merge(engine, [adapter_name(i) for i in range(self.plan.merge_adapters)], self.plan.merge_rounds)
        return {"projections": t.projections, "rank": aset.ranks[0], "merge_ms": median_ms(t.merge),
                "switch_ms": median_ms(t.switch), "restore_ms": median_ms(t.restore), "switches_timed": len(t.switch),
                "bit_exact": t.bit_exact, "merged_differs": t.merged_differs}

    def _peft_phase(self, aset: AdapterSet) -> None:
        p = self.plan
        if "hf-peft" not in p.modes or "decode" not in p.workloads or not p.peft_batches or self._late("hf-peft model"):
            return
        if max(p.batches) > max(p.peft_batches):
            self.notes.append(
                f"hf-peft not run above batch {max(p.peft_batches)}: with ~90 distinct adapters one step takes seconds "
                "(PEFT loops over the batch's adapters in every LoRA layer); --peft-batches runs it"
            )
        baseline = self._attempt(
            "hf-peft model", functools.partial(PeftBaseline, self.model_dir, aset.ranks, p.device, self.dtype)
        )
        if baseline is None:
            return
        self.results["meta"]["hf_peft_attention"] = baseline.attention
        generator = torch.Generator().manual_seed(0)

        def measure(batch: int, mix: Mix) -> dict:
            adapters = mix.adapters(batch, len(aset.ranks))
            seconds, contexts = baseline.decode(
                adapters, p.context, p.peft_warmup, p.peft_steps, p.peft_method, generator
            )
            record = self._decode_record("hf-peft", aset, None, mix, adapters, None, seconds, contexts)
            return {**record, "peft_method": p.peft_method}

        try:
            for batch in p.peft_batches:
                for mix in p.mixes:
                    label = f"hf-peft {aset.name:6s} {p.peft_method:10s} B={batch:<4d} {mix.name}"
                    self._measure(label, "decode", functools.partial(measure, batch, mix))
        finally:
            del baseline, measure
            self._free()
            write_outputs(self.results, self.plan, self.stem, self._notes(), self._elapsed(), False, self._log)

    # ---- bookkeeping -----------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _late(self, label: str) -> bool:
        if self._elapsed() > self.plan.deadline_s:
            self.skipped.append(label)
            return True
        return False

    def _attempt(self, label: str, fn: Callable):
        try:
            return fn()
        except Exception as e:  # one failure (a kernel, out of memory) must not lose the rest of the run
            traceback.print_exc(file=sys.stderr)
            self.notes.append(f"{label.strip()} failed: {type(e).__name__}: {e}")
            self._log(f"{label}: FAILED ({type(e).__name__})")
            self._free()
            return None

    def _measure(self, label: str, kind: str, fn: Callable[[], dict]) -> None:
        if self._late(label):
            return
        record = self._attempt(label, fn) or {"label": label.strip(), "error": self.notes[-1]}
        if kind == "merge":
            self.results["merge"] = record
        else:
            self.results[kind].append(record)
        if "error" not in record:
            self._log(f"{label}  {progress_line(record)}")

    def _notes(self) -> list[str]:
        late = f"{len(self.skipped)} measurements not started: past the {self.plan.deadline_s / 60:g}-minute deadline"
        return self.notes + ([f"{late} (first: {self.skipped[0].strip()})"] if self.skipped else [])

    def _log(self, line: str) -> None:
        print(f"[{self._elapsed():6.1f}s] {line}", file=sys.stderr, flush=True)

    def _free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _on(graphs: bool | None) -> str:
    return {True: "on", False: "off", None: "-"}[graphs]
