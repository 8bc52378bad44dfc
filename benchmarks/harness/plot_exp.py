"""Plots of run_exp.py's JSON lines: `python -m benchmarks.harness.plot_exp all_results_fair.jsonl all_results_slora.jsonl`.

Writes next to the (first) file, each plot only when the records hold what it needs:
  <stem>_alpha.png       throughput, output tokens/s, TTFT p90 and SLO attainment vs alpha, per mode and adapter count
  <stem>_ttft_cdf.png    the CDF of the time to first token, one panel per alpha, per mode and adapter count
  <stem>_service.png     cumulative tokens each of the top adapters received, shaded while a worker had it merged
  <stem>_rate_sweep.png  throughput and TTFT p90 vs the offered request rate (run_exp --suite rate-sweep)
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

from benchmarks.common.report import figure

TOP_ADAPTERS = 5
MAX_SERVICE_PANELS = 24
STYLE = {"fair": "-", "slora": "--"}


def load(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def label(config: dict) -> str:
    return f"{config['mode']} N={config['num_adapters']}"


def _series(records: list[dict], x_key: str) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for record in records:
        groups[label(record["config"])].append(record)
    return {name: sorted(group, key=lambda r: r["config"][x_key]) for name, group in sorted(groups.items())}


def plot_alpha(records: list[dict], out: Path) -> Path | None:
    series = {k: v for k, v in _series(records, "alpha").items() if len({r["config"]["alpha"] for r in v}) > 1}
    if not series:
        return None
    panels = [("throughput", "throughput (req/s)"), ("output_tokens_per_s", "output tokens/s"),
              ("ttft_p90", "TTFT p90 (s)"), ("avg_attainment", "SLO attainment (TTFT < 6 s)")]
    fig = figure(figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels))
    for ax, (key, title) in zip(axes, panels):
        for name, group in series.items():
            xs = [r["config"]["alpha"] for r in group]
            ys = [np.nan if r["result"][key] is None else r["result"][key] for r in group]
            ax.plot(xs, ys, STYLE.get(group[0]["config"]["mode"], ":"), marker="o", label=name)
        ax.set_xscale("log")
        alphas = sorted({r["config"]["alpha"] for group in series.values() for r in group})
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("alpha (power law; 1 = uniform)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out, "alpha", records)


def plot_ttft_cdf(records: list[dict], out: Path) -> Path | None:
    records = [r for r in records if r["result"].get("ttfts")]
    alphas = sorted({r["config"]["alpha"] for r in records})
    if not records:
        return None
    fig = figure(figsize=(5 * len(alphas), 4))
    axes = fig.subplots(1, len(alphas), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        for record in sorted((r for r in records if r["config"]["alpha"] == alpha), key=lambda r: label(r["config"])):
            ttfts = np.sort(record["result"]["ttfts"])
            ax.plot(ttfts, np.arange(1, len(ttfts) + 1) / len(ttfts), STYLE.get(record["config"]["mode"], ":"),
                    label=label(record["config"]))
        ax.axvline(6.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (s)")
        ax.set_title(f"alpha {alpha:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("share of completed requests")
    return _save(fig, out, "ttft_cdf", records)


def plot_service(records: list[dict], out: Path) -> Path | None:
    records = [r for r in records if r["result"].get("service", {}).get("output_tokens")][:MAX_SERVICE_PANELS]
    if not records:
        return None
    cols = min(4, len(records))
    rows = -(-len(records) // cols)
    fig = figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, record in zip(axes.flat, records):
        _service_panel(ax, record)
    for ax in axes.flat[len(records):]:
        ax.axis("off")
    return _save(fig, out, "service", records)


def _service_panel(ax, record: dict) -> None:
    service, config = record["result"]["service"], record["config"]
    outputs = service["output_tokens"]
    tokens = {a: np.add(service["input_tokens"].get(a, 0), outputs[a]) for a in outputs}
    top = sorted(tokens, key=lambda a: -tokens[a].sum())[:TOP_ADAPTERS]
    t = np.arange(1, len(next(iter(tokens.values()))) + 1) * service["bin_s"]
    colors = dict(zip(top, matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]))
    for adapter in top:
        ax.plot(t, np.cumsum(tokens[adapter]), color=colors[adapter], label=adapter)
    rest = [a for a in tokens if a not in top]
    if rest:
        ax.plot(t, np.cumsum(np.sum([tokens[a] for a in rest], axis=0)), "k:", label=f"the other {len(rest)}")
    samples = [s for s in record["result"].get("hot_timeline", []) if "hot" in s]
    for before, after in zip(samples, samples[1:]):
        for hot in set(before["hot"]) & set(colors):
            ax.axvspan(before["t"], after["t"], color=colors[hot], alpha=0.12, lw=0)
    ax.set_title(f"{label(config)} alpha={config['alpha']:g} (shaded: merged)", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tokens received (input + output)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_rate_sweep(records: list[dict], out: Path) -> Path | None:
    sweeps = [r for r in records if r["config"]["suite"] == "rate-sweep"]
    if not sweeps:
        return None
    groups = defaultdict(list)
    for r in sweeps:
        groups[f"{label(r['config'])} alpha={r['config']['alpha']:g}"].append(r)
    fig = figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for name, group in sorted(groups.items()):
        group.sort(key=lambda r: r["config"]["req_rate"])
        rates = [r["config"]["req_rate"] for r in group]
        style = STYLE.get(group[0]["config"]["mode"], ":")
        axes[0].plot(rates, [r["result"]["throughput"] for r in group], style, marker="o", label=name)
        axes[1].plot(rates, [np.nan if r["result"]["ttft_p90"] is None else r["result"]["ttft_p90"] for r in group],
                     style, marker="o", label=name)
        unsustained = [r for r in group if r["result"].get("sustained") is False]
        axes[0].plot([r["config"]["req_rate"] for r in unsustained], [r["result"]["throughput"] for r in unsustained],
                     "kx", ms=9, label=None)
    top = max(r["config"]["req_rate"] for r in sweeps)
    axes[0].plot([0, top], [0, top], color="grey", lw=0.8, label="offered")
    axes[0].set_title("throughput (req/s); x: not sustained")
    axes[1].set_title("TTFT p90 (s)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("offered request rate (req/s)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out, "rate_sweep", records)


def _save(fig, out: Path, kind: str, records: list[dict]) -> Path:
    config = records[0]["config"]
    device = ", ".join(config.get("device_names") or []) or config.get("device") or "unknown device"
    fig.suptitle(f"{config['model_setting']} on {device}, "
                 f"git {config['git_commit']}", fontsize=10)
    fig.tight_layout()
    path = out.parent / f"{out.name}_{kind}.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="path prefix of the PNGs (default: next to the first file)")
    opts = p.parse_args(argv)
    records = load(opts.files)
    out = opts.out or opts.files[0].parent / "+".join(f.stem for f in opts.files)
    # A sweep's configurations differ in rate only: they have a plot of their own.
    fixed_rate = [r for r in records if r["config"]["suite"] != "rate-sweep"]
    paths = [plot_alpha(fixed_rate, out), plot_ttft_cdf(fixed_rate, out), plot_service(fixed_rate, out),
             plot_rate_sweep(records, out)]
    for path in filter(None, paths):
        print(path)


if __name__ == "__main__":
    main()
