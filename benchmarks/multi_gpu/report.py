"""The multi-GPU benchmark's summary, from every line of its JSON lines file: its ratios (scaling with K on
two-hot, hot-adapter over default router at K = 2, routing hit rate, how soon a new hot adapter is merged after a
shift), a markdown table per deployment and scenario, and a plot (throughput vs K; each worker's merged adapter
over time in the shift scenario). Written next to the file: <stem>.json, <stem>.md, <stem>.png."""
import json
from pathlib import Path

from benchmarks.common.report import figure, write_files

TARGETS = {
    "scaling_K2": ("two-hot tok/s, 2 workers / 1", ">=", 1.9),
    "scaling_K4": ("two-hot tok/s, 4 workers / 1", ">=", 3.7),
    "router_gain_K2": ("two-hot tok/s, hot-adapter router / Serve's default, 2 workers", ">=", 1.15),
    "routing_hit_rate": ("lowest steady-state routing hit rate (hot-adapter router, K >= 2)", ">=", 0.95),
    "shift_merge_over_window": ("after the shift, seconds until the new adapter is merged / popularity window "
                                "(worst K)", "<=", 2.0),
}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _find(records: list[dict], k: int, router: str, scenario: str) -> dict | None:
    return next((r for r in records if (r["config"]["gpus"], r["config"]["router"], r["config"]["scenario"])
                 == (k, router, scenario)), None)


def _tok_s(record: dict | None) -> float | None:
    return record["result"]["output_tokens_per_s"] if record else None


def ratios(records: list[dict]) -> dict[str, float | None]:
    one = _tok_s(_find(records, 1, "hot_adapter", "two-hot"))

    def over_one(k: int) -> float | None:
        many = _tok_s(_find(records, k, "hot_adapter", "two-hot"))
        return many / one if many and one else None

    hot, default = (_tok_s(_find(records, 2, router, "two-hot")) for router in ("hot_adapter", "default"))
    hits = [r["result"]["routing"]["hit_rate"] for r in records
            if r["config"]["router"] == "hot_adapter" and r["config"]["gpus"] >= 2 and r["config"]["scenario"] !=
            "shift" and r["result"]["routing"]["hit_rate"] is not None]
    shifts = [(r["result"]["shift_merged_after_s"], r["config"]["popularity_window_s"]) for r in records
              if r["config"]["scenario"] == "shift" and r["config"]["router"] == "hot_adapter"]
    never = any(s is None for s, _ in shifts)
    return {
        "scaling_K2": over_one(2),
        "scaling_K4": over_one(4),
        "router_gain_K2": hot / default if hot and default else None,
        "routing_hit_rate": min(hits) if hits else None,
        # inf: some deployment never merged the new adapter before its trace ended.
        "shift_merge_over_window": float("inf") if never else max((s / w for s, w in shifts if w), default=None),
    }


def summary(records: list[dict]) -> dict:
    values = ratios(records)
    targets = {}
    for name, (what, op, goal) in TARGETS.items():
        value = values[name]
        met = None if value is None else value >= goal if op == ">=" else value <= goal
        targets[name] = {"what": what, "goal": f"{op} {goal}", "value": value, "met": met}
        if value == float("inf"):
            targets[name].update(value=None, note="some deployment never merged the new adapter")
    configs = [r["config"] for r in records]
    return {"targets": targets, "deployments": sorted({(c["gpus"], c["router"]) for c in configs}),
            "device_names": sorted({d for c in configs for d in c["device_names"]}),
            "git_commits": sorted({c["git_commit"] for c in configs}), "versions": configs[0]["versions"]}


def _f(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _merged(result: dict) -> str:
    parts = []
    for rank, changes in enumerate(result["merged"]):
        steps = " → ".join(f"{a or '—'}@{t:.0f}s" for t, a in changes)
        parts.append(f"w{rank}: {steps}")
    return "; ".join(parts)


def markdown(records: list[dict], info: dict, name: str) -> str:
    c0 = records[0]["config"]
    lines = [
        f"# Multi-GPU benchmark: {name}",
        "",
        f"- devices: {', '.join(info['device_names']) or 'cpu'}; git {', '.join(info['git_commits'])}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        f"- setting {c0['model_setting']}, {c0['num_adapters']} adapters, lengths in [{c0['lengths'][0]}, "
        f"{c0['lengths'][1]}), {c0['duration']:g} s of Poisson arrivals at the listed rate, popularity window "
        f"{c0['popularity_window_s']} s; mode fair; " + _placement(c0.get("workers_per_gpu", 1)),
        "- throughput: output tokens over the time until every request finished (on the GPUs the rate is meant to"
        " overload every K; a CPU dry run checks the mechanics and measures nothing);"
        " hit rate: of the completed requests of the second half whose adapter some worker had merged, the share"
        " admitted by such a worker",
        "",
        "## Targets",
        "",
        "| ratio | what | goal | value | |",
        "|---|---|---|---:|---|",
    ]
    for key, t in info["targets"].items():
        verdict = "not run" if t["met"] is None else "met" if t["met"] else f"missed{': ' + t['note'] if 'note' in t else ''}"
        lines.append(f"| `{key}` | {t['what']} | {t['goal']} | {_f(t['value'])} | {verdict} |")
    lines += ["", "## Runs", "",
              "| K | router | scenario | req/s offered | completed | tok/s | TTFT p50 / p90 s | hit rate (n) | "
              "switches per worker | after shift, merged in s | merged adapter over time |",
              "|---:|---|---|---:|---:|---:|---|---|---|---:|---|"]
    for r in sorted(records, key=lambda r: (r["config"]["scenario"], r["config"]["gpus"], r["config"]["router"])):
        c, res = r["config"], r["result"]
        routing = res["routing"]
        lines.append(
            f"| {c['gpus']} | {c['router']} | {c['scenario']} | {c['req_rate']:g} | {res['completed']}/"
            f"{res['num_requests']} | {res['output_tokens_per_s']:,.0f} | {_f(res['ttft_p50'])} / "
            f"{_f(res['ttft_p90'])} | {_f(routing['hit_rate'])} ({routing['eligible']}) | {res['switches']} | "
            f"{_f(res['shift_merged_after_s'], 1)} | {_merged(res)} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    fig = figure(figsize=(13, 4.5))
    left, right = fig.subplots(1, 2)
    for scenario in sorted({r["config"]["scenario"] for r in records}):
        for router, style in (("hot_adapter", "-o"), ("default", "--s")):
            points = sorted((r["config"]["gpus"], r["result"]["output_tokens_per_s"]) for r in records
                            if r["config"]["scenario"] == scenario and r["config"]["router"] == router)
            if points:
                left.plot(*zip(*points), style, label=f"{scenario}, {router} router")
    left.set_xlabel("GPU workers (K)")
    left.set_ylabel("output tokens/s")
    left.set_title("throughput vs K")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    shifts = [r for r in records if r["config"]["scenario"] == "shift" and r["config"]["router"] == "hot_adapter"]
    if shifts:
        record = max(shifts, key=lambda r: r["config"]["gpus"])
        names = {None: 0, **{a: i + 1 for i, a in enumerate(record["config"]["adapters"])}}
        end = record["result"]["total_time"]
        for rank, changes in enumerate(record["result"]["merged"]):
            times = [t for t, _ in changes] + [end]
            levels = [names.get(a, len(names)) + 0.06 * rank for _, a in changes]
            right.step(times, levels + levels[-1:], where="post", label=f"worker {rank}")
        right.axvline(record["config"]["duration"] / 2, color="grey", ls=":", label="popularity shifts")
        labels = ["none", *record["config"]["adapters"], "other"]
        right.set_yticks(range(len(labels)), labels)
        right.set_xlabel("seconds")
        right.set_title(f"merged adapter per worker, shift scenario, K={record['config']['gpus']}")
        right.legend(fontsize=7)
        right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(jsonl: Path) -> dict[str, Path]:
    records = load(jsonl)
    info = summary(records)
    return write_files(jsonl.parent, jsonl.stem, info, markdown(records, info, jsonl.stem),
                       lambda path: plot(records, path))


def _placement(workers_per_gpu: int) -> str:
    if workers_per_gpu <= 1:
        return "one worker per GPU"
    return f"{workers_per_gpu} workers share each GPU (num_gpus {1 / workers_per_gpu:g} each; K counts workers)"
