"""The engine benchmark: decode, prefill and hot-merge timings of fair_lora (modes base, fair, slora)
and of transformers + peft, each against a roofline measured in the same run; writes JSON, markdown and a plot.

Full run on the GPU machine (Llama-2-7B shapes, random bf16 weights, 100 rank-16 adapters; about 5 minutes,
and no measurement starts after --deadline-min):
    python -m benchmarks.engine.bench --out DIR
Subsets, e.g.:
    python -m benchmarks.engine.bench --quick --out DIR
    python -m benchmarks.engine.bench --modes fair,slora --batches 32,128 --mixes all-hot,0.1,1 --workloads decode
CPU smoke run in seconds (2 layers, hidden 64, 8 adapters, float32); with --device cuda, a GPU preflight:
    python -m benchmarks.engine.bench --tiny --out DIR
"""
import argparse
import sys
from pathlib import Path

from benchmarks.common.cli import ints, names
from benchmarks.common.report import RESULTS
from benchmarks.engine.plan import MODES, WORKLOADS, build_plan
from benchmarks.engine.runner import Bench
from benchmarks.engine.workload import parse_mixes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU in float32: a smoke run in seconds")
    p.add_argument("--quick", action="store_true", help="batches 32,128, five mixes, fewer steps, hf-peft at 32, r16 adapters and graphs on only")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    p.add_argument("--modes", type=names(MODES), default=MODES, help=f"comma list of {','.join(MODES)}")
    p.add_argument("--workloads", type=names(WORKLOADS), default=WORKLOADS,
                   help=f"comma list of {','.join(WORKLOADS)}")
    p.add_argument("--adapter-sets", type=names(("uniform", "mixed")), default=None, help="uniform,mixed")
    p.add_argument("--graphs", choices=("on", "off", "both"), default=None, help="engine cuda_graphs setting(s)")
    p.add_argument("--batches", type=ints, default=None, help="decode batch sizes, e.g. 1,8,32,128,256")
    p.add_argument("--mixes", type=parse_mixes, default=None, help="e.g. all-hot,0.02,0.1,1,all-distinct or all")
    p.add_argument("--peft-batches", type=ints, default=None, help="hf-peft decode batch sizes")
    p.add_argument("--peft-method", choices=("mixed", "subbatch"), default="mixed")
    p.add_argument("--context", type=int, default=None, help="prompt tokens of each decode sequence")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps per measurement")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--dtype", default=None, help="default: bfloat16, or float32 with --tiny")
    p.add_argument("--deadline-min", type=float, default=8.5, help="start no measurement after this many minutes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Run the plan; returns the written files by kind ('json', 'md', 'png')."""
    plan = build_plan(parse_args(argv))
    bench = Bench(plan)
    files = bench.run()
    print("\n".join(f"{kind}: {path}" for kind, path in files.items()), file=sys.stderr)
    return files


if __name__ == "__main__":
    main()
