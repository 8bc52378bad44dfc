"""Tokens/s against the power-law alpha, one panel per length workload, one line per mode and pass; and, when
base ran, warm tokens/s over base's against the top adapter's share (the hot-share sweep), one line per mode."""
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

STYLE = {"fair": ("tab:blue", "o"), "slora": ("tab:orange", "s"), "base": ("gray", None)}
PASSES = {"warm": "-", "cold": ":"}


def plot_throughput(results: dict, path: Path) -> None:
    configs, meta = results["configs"], results["meta"]
    workloads = list(dict.fromkeys(c["lengths"] for c in configs)) or ["fixed"]
    base = next((c for c in configs if c["mode"] == "base" and c["lengths"] == "fixed"), None)
    panels = len(workloads) + (base is not None)
    fig = Figure(figsize=(6.5 * panels, 4.5), layout="tight")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if base is not None:
        _share_panel(axes[-1], [c for c in configs if c["lengths"] == "fixed"], base)
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


def _share_panel(ax, configs: list[dict], base: dict) -> None:
    floor = base["passes"]["warm"]["tokens_per_s"]
    for mode in ("fair", "slora"):
        color, marker = STYLE[mode]
        points = sorted((c["workload"]["top_adapter_share"], c["passes"]["warm"]["tokens_per_s"] / floor)
                        for c in configs if c["mode"] == mode)
        if points:
            ax.plot(*zip(*points), marker=marker, color=color, label=f"{mode} (warm)")
    ax.axhline(1.0, color="gray", linestyle="--", label="base (no adapter)")
    ax.set_xlabel("top adapter's share of requests (hot share)")
    ax.set_ylabel("tokens/s over base's")
    ax.set_title("the merge against skew")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
