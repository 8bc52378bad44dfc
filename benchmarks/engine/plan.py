"""What one benchmark run measures: the GPU defaults, --quick and --tiny, overridden by the command line."""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common.report import REPO
from benchmarks.engine.workload import Mix, parse_mixes

MODES = ("base", "fair", "slora", "hf-peft")
WORKLOADS = ("decode", "prefill", "merge")
TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Plan:
    """Everything one run measures; built from the command line over the GPU, --quick or --tiny defaults."""

    tiny: bool
    model: str  # what the shapes are, for the report
    config: dict  # the model's config.json
    device: str
    dtype: str
    num_adapters: int
    rank: int
    mixed_ranks: tuple[int, ...]  # the mixed-rank set draws each adapter's rank from these
    modes: tuple[str, ...]
    workloads: tuple[str, ...]
    adapter_sets: tuple[str, ...]  # "uniform" (every adapter of `rank`) and/or "mixed"
    graphs: str  # "on", "off" or "both" (the main sweep on, a subset off)
    batches: tuple[int, ...]
    mixes: tuple[Mix, ...]
    key_batches: tuple[int, ...]  # plotted; the mixed-rank set and the graphs-off subset run only these
    mixed_mixes: tuple[Mix, ...]
    graphs_off_mixes: tuple[Mix, ...]
    peft_batches: tuple[int, ...]
    peft_method: str
    peft_warmup: int
    peft_steps: int
    context: int
    warmup: int
    steps: int
    turn: int  # timed steps a mode takes before the mode it is compared with takes its turn
    prefill_len: int
    prefill_reps: int
    fill_budget: int
    merge_adapters: int
    merge_rounds: int
    roofline_min_batch: int
    gemm_size: int
    copy_bytes: int
    deadline_s: float  # measurements not started by then are skipped (with a note): results still get written
    out: Path


GPU = dict(
    model="Llama-2-7B", device="cuda", dtype="bfloat16", num_adapters=100, rank=16, mixed_ranks=(8, 16, 32, 64),
    adapter_sets=("uniform", "mixed"), batches=(1, 8, 32, 128, 256), mixes="all", mixed_mixes="all",
    peft_max_batch=128, peft_warmup=1, peft_steps=3, context=256, warmup=3, steps=15, turn=3, prefill_len=2048,
    prefill_reps=5, fill_budget=16384, merge_adapters=8, merge_rounds=3, roofline_min_batch=32,
    gemm_size=8192, copy_bytes=2 << 30,
)
QUICK = dict(adapter_sets=("uniform",), batches=(32, 128), mixes="all-hot,0.02,0.1,1,all-distinct", peft_max_batch=32,
             steps=8, turn=2, prefill_reps=3, merge_rounds=2)
TINY = dict(
    model="tiny Llama (2 layers, hidden 64)", device="cpu", dtype="float32", num_adapters=8, rank=4,
    mixed_ranks=(2, 4, 8),
    batches=(1, 4), mixes="all-hot,0.1,1,all-distinct", mixed_mixes="all-hot,1", peft_max_batch=4, peft_steps=2,
    context=16, warmup=1, steps=3, turn=1, prefill_len=64, prefill_reps=2, fill_budget=64, merge_adapters=3,
    merge_rounds=2, roofline_min_batch=4, gemm_size=128, copy_bytes=4 << 20,
)


def build_plan(args: argparse.Namespace) -> Plan:
    d = {**GPU, **(QUICK if args.quick else {}), **(TINY if args.tiny else {})}
    config = json.loads((REPO / "configs" / "llama-2-7b.json").read_text())
    batches = args.batches or d["batches"]
    mixes = args.mixes or parse_mixes(d["mixes"])
    device = args.device or d["device"]
    return Plan(
        tiny=args.tiny,
        model=d["model"],
        config={**config, **TINY_CONFIG} if args.tiny else config,
        device=device,
        dtype=args.dtype or d["dtype"],
        num_adapters=d["num_adapters"],
        rank=d["rank"],
        mixed_ranks=d["mixed_ranks"],
        modes=args.modes,
        workloads=args.workloads,
        adapter_sets=args.adapter_sets or d["adapter_sets"],
        graphs=args.graphs or ("both" if device == "cuda" and not args.quick else "on"),
        batches=batches,
        mixes=mixes,
        key_batches=tuple(b for b in batches if b in (4, 32, 128)) or batches[-2:],  # 4: the tiny run's
        mixed_mixes=tuple(m for m in parse_mixes(d["mixed_mixes"]) if m in mixes) or mixes,
        graphs_off_mixes=tuple(m for m in mixes if m.name in ("all-hot", "alpha=0.1", "alpha=1")) or mixes,
        peft_batches=args.peft_batches or tuple(b for b in batches if b <= d["peft_max_batch"]),
        peft_method=args.peft_method,
        peft_warmup=d["peft_warmup"],
        peft_steps=d["peft_steps"],
        context=args.context or d["context"],
        warmup=d["warmup"],
        steps=args.steps or d["steps"],
        turn=d["turn"],
        **{k: d[k] for k in ("prefill_len", "prefill_reps", "fill_budget", "merge_adapters", "merge_rounds",
                             "roofline_min_batch", "gemm_size", "copy_bytes")},
        deadline_s=60 * args.deadline_min,
        out=args.out,
    )

