"""What a benchmark run writes: its metadata (what ran, where, with which settings), and the JSON, markdown
and plot files, rewritten after every phase so that a run cut short still reports."""
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.hf_peft_baseline import METHODS
from benchmarks.plan import Plan
from benchmarks.report import describe_set, markdown, versions
from benchmarks.roofline import ModelShape
from benchmarks.targets import targets
from benchmarks.workload import AdapterSet


def run_meta(
    p: Plan, device: torch.device, shape: ModelShape, sets: list[AdapterSet], graphs_flag: bool, graphs: bool | None
) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "date": datetime.date.today().isoformat(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": name, "tiny": p.tiny, "model": p.model, "config": p.config, "dtype": p.dtype,
        "command": sys.argv, "versions": versions(),
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
    p.out.mkdir(parents=True, exist_ok=True)
    files = {kind: p.out / f"{stem}.{kind}" for kind in ("json", "md", "png")}
    files["json"].write_text(json.dumps(results, indent=1))
    files["md"].write_text(markdown(results))
    if not (final and _plot(results, files["png"], log)):
        del files["png"]
    return files


def _plot(results: dict, path: Path, log: Callable[[str], None]) -> bool:
    try:
        from benchmarks.plot import plot_decode
    except ImportError as e:  # a GPU machine without matplotlib still gets the JSON and the markdown
        log(f"no plot: {e}")
        return False
    return plot_decode(results, path)
