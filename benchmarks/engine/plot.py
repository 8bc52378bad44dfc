"""Decode tokens/s against the power-law alpha, one panel per batch size, one line per mode."""
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

from benchmarks.engine.targets import Index

STYLE = {"fair": "o-", "slora": "s-", "hf-peft": "^-"}


def plot_decode(results: dict, path: Path) -> bool:
    """Write the plot to `path`; False when no batch of the plot has measurements."""
    ix, meta = Index(results), results["meta"]
    batches = [b for b in meta["plot_batches"] if any(k[3] == b for k in ix.decode)]
    if not batches:
        return False
    fig = Figure(figsize=(6 * len(batches), 4.5), layout="tight")
    axes = fig.subplots(1, len(batches), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for mode, style in STYLE.items():
            records = [r for r in ix.records(mode, ix.uniform) if r["batch"] == batch and r["alpha"]]
            points = sorted((r["alpha"], r["tokens_per_s"]) for r in records)
            if points:
                ax.plot(*zip(*points), style, label=mode)
        base = ix.get("base", batch, None)
        if base:
            ax.axhline(base["tokens_per_s"], color="gray", linestyle="--", label="base (no LoRA)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("power-law alpha (smaller = more skewed; 1 = uniform)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"batch {batch}, {ix.uniform} adapters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{meta['model']} on {meta['device_name']}, {meta['date']}")
    fig.savefig(path, dpi=120)
    return True
