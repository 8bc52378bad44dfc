"""Runs a Plan: calibration, then the engine and baseline phases in order of importance. Every phase writes the
results so far, and a failed or late measurement becomes a note, so a run cut short still reports.

An engine phase holds a slora and a fair engine at once and times the modes that are compared in pairs, in
turns of a few steps: slora with fair at each mix, and base (requests without an adapter, on the slora
engine) with fair serving every token hot."""
import functools
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common.report import output_stem
from benchmarks.engine.hf_peft_baseline import PeftBaseline
from benchmarks.engine.measure import (
    DecodeRun,
    DecodeTiming,
    EngineSettings,
    adapter_name,
    engine_sets,
    free_device,
    graphs_flag_present,
    interleave,
    measure_merge,
    prefill_step,
)
from benchmarks.engine.output import run_meta, write_outputs
from benchmarks.engine.plan import Plan
from benchmarks.engine.records import Adapters, decode_record, engine_of, fair_hot, merge_record, prefill_record
from benchmarks.engine.report import progress_line
from benchmarks.engine.roofline import Calibration, ModelShape, calibrate
from benchmarks.engine.workload import AdapterSet, Mix, mixed_set, uniform_set



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
        self.stem = output_stem("engine_bench", self.results["meta"]["date"], self.results["meta"]["device_name"], plan.tiny)

    def run(self) -> dict[str, Path]:
        p = self.plan
        first, *others = self.sets
        with tempfile.TemporaryDirectory() as tmp:
            self.model_dir = Path(tmp)
            (self.model_dir / "config.json").write_text(json.dumps(p.config))
            self._calibrate()
            self._engine_phase(first, self.graphs, p.batches, p.mixes, main=True)
            self._peft_phase(first)
            if self.graphs_off_too:
                self._engine_phase(first, False, p.key_batches, p.graphs_off_mixes, main=False)
            for aset in others:
                self._engine_phase(aset, self.graphs, p.key_batches, p.mixed_mixes, main=False)
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
        self._free()  # its buffers would otherwise stay cached beside two engines

    def _engine_phase(self, aset: AdapterSet, graphs: bool | None, batches, mixes, main: bool) -> None:
        """The slora and fair engines over batches × mixes; the main phase adds the prefills and the merge."""
        p = self.plan
        base = "base" in p.modes and aset is self.sets[0]
        modes = [m for m in ("slora", "fair") if m in p.modes or (m == "slora" and base)]  # base runs on slora's
        label = f"{'+'.join(modes)} engines ({aset.name}, graphs {_on(graphs)})"
        if not modes or self._late(label):
            return
        s = EngineSettings(
            model_dir=self.model_dir, device=p.device, dtype=p.dtype, context=p.context, warmup=p.warmup, steps=p.steps,
            prefill_len=p.prefill_len, prefill_reps=p.prefill_reps, max_batch=max(batches), fill_budget=p.fill_budget,
        )

        def measure_all() -> None:
            for engines in engine_sets(s, modes, aset.ranks, graphs, self.notes.append):
                try:
                    self._engines_measure(engines, s, aset, graphs, batches, mixes, main, base)
                finally:
                    engines.clear()
                    write_outputs(self.results, self.plan, self.stem, self._notes(), self._elapsed(), False, self._log)

        self._attempt(label, measure_all)  # an engine that cannot be built ends the phase, not the run

    def _engines_measure(self, engines: dict, s: EngineSettings, aset: AdapterSet, graphs: bool | None, batches,
                         mixes, main: bool, base: bool) -> None:
        p = self.plan
        for batch in batches if "decode" in p.workloads else ():
            if base and "slora" in engines:  # else fair all-hot is timed beside slora below
                self._decode(engines, s, aset, graphs, batch, [("base", None), ("fair", Mix("all-hot"))])
            for mix in mixes:
                self._decode(engines, s, aset, graphs, batch, [("slora", mix), ("fair", mix)])
        if main and "prefill" in p.workloads:
            self._prefills(engines, s, aset, base)
        if main and "fair" in engines and "fair" in p.modes and "merge" in p.workloads:
            engines.pop("slora", None)  # room for the merge's copy of the loaded weights
            self._free()
            self._measure(f"merge   {aset.name} switches", "merge",
                          functools.partial(self._merge, engines["fair"], aset.ranks[0]))

    def _decode(self, engines: dict, s: EngineSettings, aset: AdapterSet, graphs: bool | None, batch: int,
                cases: list[tuple[str, Mix | None]]) -> None:
        """Time the cases' batches in turns; a base record keeps its fair partner (fair's own record of that mix
        is from its pair with slora)."""
        cases = [(m, mix) for m, mix in cases if (m == "base" or m in self.plan.modes) and engine_of(m) in engines]
        if not cases:
            return

        def measure() -> list[dict]:
            runs, records = [], []
            try:
                for mode, mix in cases:
                    adapters: Adapters = [None] * batch if mix is None else mix.adapters(batch, len(aset.ranks))
                    hot = fair_hot(mode, adapters)
                    names = [None if a is None else adapter_name(a) for a in adapters]
                    hot_name = None if hot is None else adapter_name(hot)
                    runs.append(DecodeRun(engines[engine_of(mode)], s, names, hot_name, self.rng))
                    records.append((mode, mix, adapters, hot))
                timings = interleave(runs, s.warmup, s.steps, self.plan.turn)
            finally:
                for run in runs:
                    run.close()
            out = [decode_record(self.shape, self.cal, mode, aset, graphs, mix, adapters, hot, t)
                   for (mode, mix, adapters, hot), t in zip(records, timings)]
            for r in out:
                r["timed_with"] = [other["mode"] for other in out if other is not r]
            if out[0]["mode"] == "base" and len(out) > 1:
                keep = ("mode", "mix", "hot", "step_ms", "step_ms_min", "step_ms_max", "corrected_tokens")
                return [{**out[0], "partner": {k: out[1][k] for k in keep}}]
            return out

        names = " + ".join(m if mix is None else f"{m} {mix.name}" for m, mix in cases)
        self._measure(f"decode  {aset.name:6s} graphs={_on(graphs):3s} B={batch:<4d} {names}", "decode", measure)

    def _prefills(self, engines: dict, s: EngineSettings, aset: AdapterSet, base: bool) -> None:
        """slora engine: base (no adapter) and an adapter's request; fair engine (adapter 0 merged): a hot and a
        cold request. Each repetition runs every case once, in turns; the first repetition is a warm-up."""
        p = self.plan
        fair = "fair" in p.modes
        wanted = {"base": base, "slora": "slora" in p.modes, "fair-hot": fair, "fair-cold": fair}
        cases = [c for c in [("base", None, None), ("slora", 1, None), ("fair-hot", 0, 0), ("fair-cold", 1, 0)]
                 if wanted[c[0]] and engine_of(c[0]) in engines]
        if not cases:
            return

        def measure() -> list[dict]:
            if "fair" in engines:
                engines["fair"].set_hot_adapter(adapter_name(0))
            seconds: dict[str, list[float]] = {case: [] for case, _, _ in cases}
            for rep in range(s.prefill_reps + 1):
                for case, adapter, _ in cases:
                    name = None if adapter is None else adapter_name(adapter)
                    t = prefill_step(engines[engine_of(case)], s, name, self.rng)
                    if rep:
                        seconds[case].append(t)
            return [prefill_record(self.shape, self.cal, s.prefill_len, aset, case, adapter, hot, seconds[case])
                    for case, adapter, hot in cases]

        names = ", ".join(case for case, _, _ in cases)
        self._measure(f"prefill {names} {s.prefill_len} tokens", "prefill", measure)

    def _merge(self, engine, rank: int) -> dict:
        names = [adapter_name(i) for i in range(self.plan.merge_adapters)]
        return merge_record(measure_merge(engine, names, self.plan.merge_rounds), rank)

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
            timing = DecodeTiming(seconds, contexts)
            record = decode_record(self.shape, self.cal, "hf-peft", aset, None, mix, adapters, None, timing)
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

    def _measure(self, label: str, kind: str, fn: Callable[[], dict | list[dict]]) -> None:
        """Run one measurement (a record, or the records of modes timed in turns) unless past the deadline."""
        if self._late(label):
            return
        found = self._attempt(label, fn) or {"label": label.strip(), "error": self.notes[-1]}
        records = found if isinstance(found, list) else [found]
        if kind == "merge":
            self.results["merge"] = records[0]
        else:
            self.results[kind] += records
        if "error" in records[0]:
            return
        if len(records) == 1:
            self._log(f"{label}  {progress_line(records[0])}")
            return
        self._log(label)
        for r in records:
            self._log(f"    {r.get('case') or r['mode']:9s} {progress_line(r)}")

    def _notes(self) -> list[str]:
        late = f"{len(self.skipped)} measurements not started: past the {self.plan.deadline_s / 60:g}-minute deadline"
        return self.notes + ([f"{late} (first: {self.skipped[0].strip()})"] if self.skipped else [])

    def _log(self, line: str) -> None:
        print(f"[{self._elapsed():6.1f}s] {line}", file=sys.stderr, flush=True)

    def _free(self) -> None:
        free_device(self.device)


def _on(graphs: bool | None) -> str:
    return {True: "on", False: "off", None: "-"}[graphs]

