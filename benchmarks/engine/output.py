"""What a benchmark run writes: its metadata (what ran, where, with which settings), and the JSON, markdown
and plot files, rewritten after every phase so that a run cut short still reports."""
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common.report import run_meta as common_meta
from benchmarks.common.report import write_files
from benchmarks.engine.hf_peft_baseline import METHODS
from benchmarks.engine.plan import Plan
from benchmarks.engine.report import describe_set, markdown
from benchmarks.engine.roofline import ModelShape
from benchmarks.engine.targets import targets
from benchmarks.engine.workload import AdapterSet


def run_meta(
    p: Plan, device: torch.device, shape: ModelShape, sets: list[AdapterSet], graphs_flag: bool, graphs: bool | None
) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        **common_meta(name), "tiny": p.tiny, "model": p.model, "config": p.config, "dtype": p.dtype,
        "adapter_sets": [describe_set(s, shape.layers * len(shape.projections)) for s in sets],
        "graphs_flag": graphs_flag, "primary_graphs": graphs,
        "batches": list(p.batches), "mixes": [m.name for m in p.mixes], "plot_batches": list(p.key_batches),
        "context": p.context, "warmup": p.warmup, "steps": p.steps, "turn": p.turn, "prefill_len": p.prefill_len,
        "hf_peft_method": p.peft_method, "hf_peft_description": METHODS[p.peft_method],
        "peft_warmup": p.peft_warmup, "peft_steps": p.peft_steps, "roofline_min_batch": p.roofline_min_batch,
    }


def write_outputs(
    results: dict, p: Plan, stem: str, notes: list[str], elapsed_s: float, final: bool, log: Callable[[str], None]
) -> dict[str, Path]:
    """JSON and markdown after every phase; the plot at the end (`final`)."""
    results["meta"]["wall_s"] = elapsed_s
    results["notes"] = notes
    results["targets"] = targets(results)
    return write_files(p.out, stem, results, markdown(results), _plot(results, final), log)


def _plot(results: dict, final: bool) -> Callable[[Path], bool] | None:
    if not final:
        return None

    def draw(path: Path) -> bool:
        from benchmarks.engine.plot import plot_decode

        return plot_decode(results, path)

    return draw
