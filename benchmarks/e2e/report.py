"""The end-to-end benchmark's ratios and targets, its markdown report, plot and output files.

Ratios compare warm passes of the fixed-length workload measured in the same run; `gpu_busy_decode` is the
lowest over the configurations, `cold_over_warm` the worst configuration's cold/warm tokens/s. A ratio whose
configurations did not run is None, and its target says "not measured"."""
from collections.abc import Callable
from pathlib import Path

from benchmarks.common.report import write_files

RATIO_WORKLOAD = "fixed"
TARGETS = (  # key, what it is, goal (value >= goal)
    ("fair_over_base_alpha0.02", "fair / base tokens/s at alpha 0.02 (91% hot)", 0.93),
    ("fair_over_slora_alpha0.02", "fair / slora tokens/s at alpha 0.02 (91% hot)", 1.12),
    ("fair_over_slora_alpha1", "fair / slora tokens/s at alpha 1", 0.98),
    ("slora_over_base_alpha1", "slora / base tokens/s at alpha 1", 0.82),
    ("gpu_busy_decode", "GPU busy share of decode-step wall time (lowest configuration)", 0.92),
    ("cold_over_warm", "cold / warm tokens/s (worst configuration)", 0.90),
    ("fair_over_base_hot98", "fair / base tokens/s at 98% hot", 0.97),
    ("fair_over_base_hot80", "fair / base tokens/s at 80% hot", 0.88),
    ("fair_over_slora_hot80", "fair / slora tokens/s at 80% hot", 1.0),
    ("auto_over_slora_min", "fair (auto) / slora tokens/s, lowest over every alpha and hot share", 0.99),
)
RATIO_KEYS = ("fair_over_slora_alpha0.02", "fair_over_base_alpha0.02", "fair_over_slora_alpha1",
              "slora_over_base_alpha1", "gpu_busy_decode", "cold_over_warm", "fair_over_base_hot98",
              "fair_over_base_hot80", "fair_over_slora_hot80", "auto_over_slora_min")
PAIRS = {  # ratio -> (mode, alpha) over (mode, alpha), warm tokens/s
    "fair_over_slora_alpha0.02": (("fair", 0.02), ("slora", 0.02)),
    "fair_over_base_alpha0.02": (("fair", 0.02), ("base", None)),
    "fair_over_slora_alpha1": (("fair", 1.0), ("slora", 1.0)),
    "slora_over_base_alpha1": (("slora", 1.0), ("base", None)),
}
SHARE_PAIRS = {  # ratio -> (mode, hot share of the sweep) over (mode, hot share), warm tokens/s
    "fair_over_base_hot98": (("fair", 0.98), ("base", None)),
    "fair_over_base_hot80": (("fair", 0.8), ("base", None)),
    "fair_over_slora_hot80": (("fair", 0.8), ("slora", 0.8)),
}


def ratios(configs: list[dict]) -> dict[str, float | None]:
    return {key: value for key, (value, _) in _measured(configs).items()}


def targets(configs: list[dict]) -> dict[str, dict]:
    """Each ratio's target: its value, the goal, met or missed, and the configurations it comes from."""
    measured, goals = _measured(configs), {key: (what, goal) for key, what, goal in TARGETS}
    out = {}
    for key, (value, where) in measured.items():
        what, goal = goals[key]
        met = None if value is None else value >= goal
        status = {None: "not measured", True: "met", False: "missed"}[met]
        out[key] = {"target": what, "value": value, "goal": f">= {goal}", "met": met, "status": status, "from": where}
    return out


def _warm_ratio(a: dict | None, b: dict | None) -> tuple[float | None, str | None]:
    warm = [c["passes"]["warm"]["tokens_per_s"] for c in (a, b) if c]
    return (warm[0] / warm[1], f"{a['name']} / {b['name']}") if len(warm) == 2 and warm[1] else (None, None)


def _measured(configs: list[dict]) -> dict[str, tuple[float | None, str | None]]:
    fixed = [c for c in configs if c["lengths"] == RATIO_WORKLOAD]
    by_alpha = {(c["mode"], c["alpha"]): c for c in fixed if c.get("hot_share") is None}
    by_share = {(c["mode"], c.get("hot_share")): c for c in fixed}
    out: dict[str, tuple[float | None, str | None]] = {}
    for key, (over, under) in PAIRS.items():
        out[key] = _warm_ratio(by_alpha.get(over), by_alpha.get(under))
    busy = [(c["gpu_busy_decode"]["busy"], c["name"]) for c in fixed
            if c["gpu_busy_decode"]["busy"] is not None]
    cold = [(c["cold_over_warm"], c["name"]) for c in fixed if c["cold_over_warm"] is not None]
    out["gpu_busy_decode"] = min(busy) if busy else (None, None)
    out["cold_over_warm"] = min(cold) if cold else (None, None)
    for key, (over, under) in SHARE_PAIRS.items():
        out[key] = _warm_ratio(by_share.get(over), by_alpha.get(under) or by_share.get(under))
    auto = [_warm_ratio(c, next((s for s in fixed if s["mode"] == "slora" and s["alpha"] == c["alpha"]), None))
            for c in fixed if c["mode"] == "fair"]
    auto = [r for r in auto if r[0] is not None]
    out["auto_over_slora_min"] = min(auto) if auto else (None, None)
    assert tuple(out) == RATIO_KEYS
    return out


def markdown(results: dict) -> str:
    meta, s = results["meta"], results["meta"]["settings"]
    v = meta["versions"]
    lines = [
        f"# End-to-end benchmark: {meta['date']}, {meta['device_name']}{' (tiny smoke run)' if meta['tiny'] else ''}",
        "",
        f"- versions: torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}; fair_lora git {v['git']}, "
        f"sources {v['fair_lora_sources']}",
        f"- model: {s['model']}, {s['dtype']} on {s['device']}; {_adapters(s)}; {s['requests']} requests a pass, "
        "all added at once (greedy, ignore_eos); max_num_seqs "
        f"{s['max_num_seqs']}, max_adapter_slots {s['max_adapter_slots']}, max_model_len {s['max_model_len']}, "
        f"max_num_batched_tokens {s['max_num_batched_tokens']}",
        "- each configuration on its own engine, in the order below: start-up (constructor, in-memory adapters, "
        "warm_up()), a cold pass, a warm pass of the same requests, then a profiled window of decode steps",
        f"- Triton compile hook: {meta['compile_hook']} (compiled kernels are per process: engines after the first "
        f"find what earlier ones compiled); run wall time {meta['wall_s']:.0f} s",
        "",
        "## Targets (warm passes, fixed lengths, this run)",
        "",
        "| ratio | target | value | goal | | from |",
        "|---|---|---:|---|---|---|",
    ]
    for key, t in results["targets"].items():
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| `{key}` | {t['target']} | {value} | {t['goal']} | {t['status']} | {t['from'] or '–'} |")
    lines += ["", "## Configurations", ""] + _config_table(results["configs"])
    if results["notes"]:
        lines += ["", "## Notes", "", *(f"- {n}" for n in results["notes"])]
    return "\n".join(lines) + "\n"


def _adapters(s: dict) -> str:
    if not s["num_adapters"]:
        return "the demo's own adapters"
    return f"{s['num_adapters']} random rank-{s['rank']} adapters on all seven projections, in memory"


def _config_table(configs: list[dict]) -> list[str]:
    lines = [
        "Tokens/s are output tokens over the pass's wall time. Latencies and decode steps of the warm pass: TTFT "
        "from each request's submission, per-token = gap between a request's successive tokens. In passes: Triton "
        "compiles / graphs captured / adapter slots loaded, cold pass then warm pass.",
        "",
        "| configuration | top share | hot share | start-up s (warm-up) | cold tok/s | warm tok/s | cold/warm | "
        "TTFT ms p50/p90/p99 | per-token ms p50/p90/p99 | decode step ms p50 | decode busy | switches | in passes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for c in configs:
        cold, warm, busy = c["passes"]["cold"], c["passes"]["warm"], c["gpu_busy_decode"]["busy"]
        lines.append(
            f"| {c['name']} | {c['workload']['top_adapter_share']:.2f} | {warm['hot_share']:.2f} | "
            f"{c['startup']['seconds']:.1f} ({c['startup']['warmup_s']:.1f}) | {cold['tokens_per_s']:,.0f} | "
            f"{warm['tokens_per_s']:,.0f} | {_num(c['cold_over_warm'])} | {_triple(warm['ttft_ms'])} | "
            f"{_triple(warm['per_token_ms'])} | {_num(warm['decode_step_ms']['p50'])} | {_num(busy)} | "
            f"{cold['switches']}+{warm['switches']} | {_started(cold)}; {_started(warm)} |"
        )
    return lines


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _triple(p: dict) -> str:
    return "/".join("–" if p[k] is None else f"{p[k]:.1f}" for k in ("p50", "p90", "p99"))


def _started(p: dict) -> str:
    return "/".join("–" if p[k] is None else str(p[k]) for k in ("triton_compiles", "graphs_captured",
                                                                   "adapters_made_resident"))


def progress_line(c: dict, kind: str) -> str:
    if kind == "startup":
        s = c["startup"]
        return (f"start-up {s['seconds']:.1f} s (constructor {s['constructor_s']:.1f}, adapters "
                f"{s['add_adapters_s']:.1f}, warm-up {s['warmup_s']:.1f}); {s['memory_plan']}")
    if kind == "busy":
        b = c["gpu_busy_decode"]
        if b["busy"] is None:
            return f"decode busy: {b['reason']}"
        return f"decode busy {b['busy']:.3f} ({b['source']}; {b['step_ms']:.2f} ms steps, {b['device_ms']:.2f} ms busy)"
    p = c["passes"][kind]
    return (f"{kind:4} {p['tokens_per_s']:9,.0f} tok/s in {p['wall_s']:.1f} s, TTFT p50 {_num(p['ttft_ms']['p50'])} "
            f"ms, per-token p50 {_num(p['per_token_ms']['p50'])} ms, hot share {p['hot_share']:.2f}, switches "
            f"{p['switches']}, compiles/graphs/loads {_started(p)}{_kernels(p)}")


def _kernels(p: dict) -> str:
    kernels = p.get("compiled_kernels") or {}
    return "; compiled: " + ", ".join(f"{name} ×{n}" for name, n in kernels.items()) if kernels else ""


def write_outputs(results: dict, out: Path, stem: str, final: bool) -> dict[str, Path]:
    return write_files(out, stem, results, markdown(results), _plot(results) if final else None,
                       results["notes"].append)


def _plot(results: dict) -> Callable[[Path], None]:
    def draw(path: Path) -> None:
        from benchmarks.e2e.plot import plot_throughput

        plot_throughput(results, path)

    return draw
