"""The end-to-end engine benchmark: the public generate() path (all requests added at once, then
step() until done) on Llama-2-7B shapes with random bf16 weights and 100 rank-16 in-memory adapters on all seven
projections; max_num_seqs 128, max_adapter_slots 101, max_model_len 1024.

Modes: base (requests without an adapter), slora, fair (auto_hot: the engine picks its hot adapter itself).
Adapters are drawn as S-LoRA draws them (floor(N · power(alpha)), seed 42). Workloads: "fixed" (512 requests,
prompt 128, output 128) at alpha 0.02, 0.1, 0.5, 1, and S-LoRA's length "mix" (input and output uniform in
[8, 512)). Each configuration gets its own engine: start-up (timed: constructor, adapters, warm_up()), a cold
pass, a warm pass of the same requests, then a profiled window of decode steps (GPU-busy fraction). Writes
e2e_<date>_<gpu>.json, .md and .png into --out, rewritten after every configuration; prints a line per
configuration and pass, with an ETA. The JSON's "ratios" and "targets" are the goals: the six at alpha 0.02 and 1
and the hot-share sweep's four.

The hot-share sweep (--sweep): base, fair and slora at alpha 0.02 and 1, then fair and slora at top-adapter shares
1, 0.98, 0.8, 0.6 and 0.3 (alpha drawn from the share), each reporting its distinct adapters; the plot adds
tokens/s over base's against the share. About 15 configurations: on an H100 with --requests 256 the first 13 fit
4.2 minutes. --hot-shares picks other shares.
    python -m benchmarks.e2e --sweep --out DIR

GPU run. The default is 12 configurations: every mode at the four alphas with fixed lengths, and the length mix
at alpha 0.02 only. The first configuration takes longest (it draws the adapters and compiles the kernels) and
a length-mix one about twice a fixed-length one; no configuration starts that would end after --deadline-min
(default 9, about what the default takes on an H200), and a skipped one is named in the notes:
    python -m benchmarks.e2e.bench --out DIR
Subsets, e.g. the six ratios alone (about 4 minutes), or the length mix at alpha 0.02 and 1 (about 6):
    python -m benchmarks.e2e.bench --alphas 0.02,1 --lengths fixed --out DIR
    python -m benchmarks.e2e.bench --lengths mix --mix-alphas 0.02,1 --out DIR
CPU smoke run (the embedded demo model and its six adapters, 12 short requests; under a minute):
    python -m benchmarks.e2e.bench --tiny --out DIR
"""
import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.common.cli import floats, names
from benchmarks.common.report import REPO, RESULTS, output_stem, run_meta
from benchmarks.e2e.busy import decode_busy
from benchmarks.e2e.counters import compile_hook_name
from benchmarks.e2e.measure import build_engine, model_directory, run_pass
from benchmarks.e2e.report import progress_line, ratios, targets, write_outputs
from benchmarks.e2e.workload import (GPU_LENGTHS, MODES, TINY_LENGTHS, Configuration, Settings, configurations,
                                     requests_for, sweep_configurations, workload_summary)
from benchmarks.engine.measure import free_device

GPU = Settings(
    tiny=False, model="Llama-2-7B shapes, random weights",
    model_config=json.loads((REPO / "configs" / "llama-2-7b.json").read_text()), device="cuda", dtype="bfloat16",
    num_adapters=100, rank=16, requests=512, max_num_seqs=128, max_adapter_slots=101, max_model_len=1024,
    max_num_batched_tokens=2048, lengths=GPU_LENGTHS, profile_steps=24,
)
TINY = Settings(
    tiny=True, model="the embedded demo model", model_config=None, device="cpu", dtype="float32", num_adapters=0,
    rank=16, requests=12, max_num_seqs=6, max_adapter_slots=7, max_model_len=256, max_num_batched_tokens=128,
    lengths=TINY_LENGTHS, profile_steps=10,
)
SWEEP_SHARES = (1.0, 0.98, 0.8, 0.6, 0.3)  # with alpha 0.02 (91%) and 1 (uniform): the headline sweep
DEMO_ADAPTERS = 6  # --tiny: the demo's own adapters
PRIOR_S = {"fixed": 35.0, "mix": 75.0}  # a GPU configuration's seconds (an H200's) until one has run here
TINY_PRIOR_S = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the demo model on the CPU, a few short requests")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    p.add_argument("--modes", type=names(MODES), default=MODES, help="comma list of base,slora,fair")
    p.add_argument("--alphas", type=floats, default=None, help="fixed-length workload (default 0.02,0.1,0.5,1)")
    p.add_argument("--mix-alphas", type=floats, default=None, help="length-mix workload (default 0.02)")
    p.add_argument("--lengths", type=names(("fixed", "mix")), default=("fixed", "mix"), help="fixed,mix")
    p.add_argument("--requests", type=int, default=None, help="requests a pass (default 512; --tiny 12)")
    p.add_argument("--profile-steps", type=int, default=None, help="steps of the profiled decode window")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--hot-shares", type=floats, default=None,
                   help="also sweep the top adapter's share, e.g. 1,0.98,0.8,0.6,0.3 (fixed lengths)")
    p.add_argument("--sweep", action="store_true",
                   help="the hot-share sweep: shares 1,0.98,0.8,0.6,0.3 plus alpha 0.02 (91%%) and 1, fixed lengths")
    p.add_argument("--sync", action="store_true", help="async_scheduling=False: read each step's tokens before the next")
    p.add_argument("--deadline-min", type=float, default=9.0, help="start no configuration expected to end later")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = TINY if args.tiny else GPU
    return replace(s, requests=args.requests or s.requests, profile_steps=args.profile_steps or s.profile_steps,
                   device=args.device or s.device, async_scheduling=False if args.sync else None)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.s = settings_from(args)
        alphas = args.alphas or ((0.02, 1.0) if args.tiny or args.sweep else (0.02, 0.1, 0.5, 1.0))
        lengths = ("fixed",) if args.sweep else args.lengths
        self.configs = configurations(args.modes, alphas, [self.s.lengths[n] for n in lengths],
                                      args.mix_alphas or (0.02,))
        shares = args.hot_shares or (SWEEP_SHARES if args.sweep else ())
        num_adapters = self.s.num_adapters or DEMO_ADAPTERS
        self.configs += sweep_configurations(args.modes, shares, num_adapters, self.s.lengths["fixed"])
        self.deadline_s, self.out = 60 * args.deadline_min, args.out
        self.start = time.perf_counter()
        self.adapters = None  # created by the first engine, shared by the others
        self.spent: list[tuple[float, float]] = []  # (prior, seconds) of each finished configuration
        device = torch.device(self.s.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        settings = {k: v for k, v in asdict(self.s).items() if k != "model_config"}
        self.results = {
            "meta": {
                **run_meta(name), "tiny": self.s.tiny,
                "settings": settings, "model_config": self.s.model_config,
                "order": [c.name for c in self.configs], "compile_hook": compile_hook_name(),
                "wall_s": 0.0,
            },
            "configs": [], "ratios": ratios([]), "targets": targets([]), "notes": [],
        }
        self.stem = output_stem("e2e", self.results["meta"]["date"], name, self.s.tiny)

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():6.0f} s] {text}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def prior(self, c: Configuration) -> float:
        return TINY_PRIOR_S if self.s.tiny else PRIOR_S[c.lengths.name]

    def expected(self, c: Configuration) -> float:
        """Seconds this configuration should take: its prior, scaled by how the finished ones compared to theirs."""
        done_prior, done = sum(p for p, _ in self.spent), sum(x for _, x in self.spent)
        return self.prior(c) * (done / done_prior if done_prior else 1.0)

    def run(self) -> dict[str, Path]:
        threads = torch.get_num_threads()
        if self.s.device == "cpu":  # a tiny model gains nothing from threads, and they stall on a busy machine
            torch.set_num_threads(1)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> dict[str, Path]:
        with tempfile.TemporaryDirectory() as tmp, model_directory(self.s, Path(tmp)) as model_dir:
            for i, config in enumerate(self.configs):
                remaining = sum(self.expected(c) for c in self.configs[i:])
                if self.elapsed() + self.expected(config) > self.deadline_s:
                    self.note(f"{config.name} and the configurations after it were skipped: the run's deadline")
                    break
                self.log(f"configuration {i + 1}/{len(self.configs)}: {config.name}; ETA {remaining / 60:.1f} min")
                self.measure(config, model_dir)
                self.write(final=False)
        files = self.write(final=True)
        self.log("\n".join(f"{kind}: {path}" for kind, path in files.items()))
        return files

    def measure(self, config: Configuration, model_dir: Path | None) -> None:
        started = self.elapsed()
        try:
            record = self._configuration(config, model_dir, started)
        except Exception as e:  # noqa: BLE001 - one failed configuration must not lose the others
            self.note(f"{config.name} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
        else:
            self.results["configs"].append(record)
            self._check(record)
        free_device(torch.device(self.s.device))
        self.spent.append((self.prior(config), self.elapsed() - started))

    def _configuration(self, config: Configuration, model_dir: Path | None, started: float) -> dict:
        engine, startup, self.adapters = build_engine(self.s, config.engine_mode, model_dir, self.adapters)
        names = engine.adapters()
        requests = requests_for(config, len(names), self.s.requests)
        record = {"name": config.name, "mode": config.mode, "engine_mode": config.engine_mode,
                  "alpha": config.alpha, "hot_share": config.hot_share, "lengths": config.lengths.name, "started_s": started,
                  "workload": workload_summary(requests), "startup": startup, "passes": {}}
        self.log(progress_line(record, "startup"))
        for kind in ("cold", "warm"):
            record["passes"][kind] = run_pass(engine, requests, names)
            self.log(progress_line(record, kind))
        cold, warm = (record["passes"][k]["tokens_per_s"] for k in ("cold", "warm"))
        record["cold_over_warm"] = cold / warm if warm else None
        try:
            record["gpu_busy_decode"] = decode_busy(engine, requests, names, self.s.profile_steps)
        except Exception as e:  # noqa: BLE001 - the passes stand without the profile
            record["gpu_busy_decode"] = {"busy": None, "reason": f"profiling failed: {type(e).__name__}: {e}"}
        self.log(progress_line(record, "busy"))
        record["seconds"] = self.elapsed() - started
        return record

    def _check(self, record: dict) -> None:
        for kind, p in record["passes"].items():
            if p["errors"] or p["output_tokens"] != p["expected_output_tokens"]:
                self.note(f"{record['name']} {kind} pass: {p['output_tokens']} of {p['expected_output_tokens']} "
                          f"output tokens, {p['errors']} requests failed (first: {p['first_error']})")

    def note(self, text: str) -> None:
        self.log(text)
        self.results["notes"].append(text)

    def write(self, final: bool) -> dict[str, Path]:
        self.results["meta"]["wall_s"] = self.elapsed()
        self.results["ratios"] = ratios(self.results["configs"])
        self.results["targets"] = targets(self.results["configs"])
        return write_outputs(self.results, self.out, self.stem, final)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Run the benchmark; returns the written files by kind ('json', 'md', 'png')."""
    return Run(parse_args(argv)).run()


if __name__ == "__main__":
    main()
