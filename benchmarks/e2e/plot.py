"""Tokens/s against the power-law alpha, one panel per length workload, one line per mode and pass."""
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

STYLE = {"fair": ("tab:blue", "o"), "slora": ("tab:orange", "s"), "base": ("gray", None)}
PASSES = {"warm": "-", "cold": ":"}


def plot_throughput(results: dict, path: Path) -> None:
    configs, meta = results["configs"], results["meta"]
    workloads = list(dict.fromkeys(c["lengths"] for c in configs)) or ["fixed"]
    fig = Figure(figsize=(6.5 * len(workloads), 4.5), layout="tight")
    axes = fig.subplots(1, len(workloads), squeeze=False)[0]
    for ax, workload in zip(axes, workloads):
        mine = [c for c in configs if c["lengths"] == workload]
        for kind, line in PASSES.items():
            for mode in ("fair", "slora"):
                color, marker = STYLE[mode]
                points = sorted((c["alpha"], c["passes"][kind]["tokens_per_s"]) for c in mine if c["mode"] == mode)
                if points:
                    ax.plot(*zip(*points), linestyle=line, marker=marker, color=color, label=f"{mode}, {kind}")
            for c in (c for c in mine if c["mode"] == "base"):
                ax.axhline(c["passes"][kind]["tokens_per_s"], color="gray", linestyle=line,
                           label=f"base (no adapter), {kind}")
        ax.set_xscale("log")
        ax.set_xlabel("power-law alpha (smaller = more skewed; 1 = uniform)")
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"{workload} lengths")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{meta['settings']['model']} on {meta['device_name']}, {meta['date']}: generate() end to end")
    fig.savefig(path, dpi=120)
