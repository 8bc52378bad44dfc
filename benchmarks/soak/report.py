"""The soak's account of every request (answered / refused 4xx / failed 5xx and why / lost), its targets, and a
plot of latency and worker memory over time."""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.soak.traffic import Outcome

# A new worker's memory grows while it warms up, which is not a leak: a replacement's RSS is counted from this long
# after it came up (docs/benchmarks-history.md, the soak, has the run that measured it).
WARM_S = 120.0
REPLACED_AFTER_S = 15.0  # a worker first sampled later than this (every 5 s) replaced a killed one


def account(outcomes: list[Outcome]) -> dict:
    by = {"answered": 0, "refused_4xx": Counter(), "failed_5xx": Counter(), "lost": 0}
    for o in outcomes:
        if o.status is None:
            by["lost"] += 1
        elif o.status < 400:
            by["answered"] += 1
        elif o.status < 500:
            by["refused_4xx"][f"{o.kind} {o.status}"] += 1
        else:
            by["failed_5xx"][f"{o.kind} {o.status}: {_why(o)}"] += 1
    return {"requests": len(outcomes), "by_kind": dict(Counter(o.kind for o in outcomes)),
            **{k: dict(v) if isinstance(v, Counter) else v for k, v in by.items()}}


def _why(o: Outcome) -> str:
    return (o.error or "")[:160]  # a failure after tokens says how many in its own message


def targets(outcomes: list[Outcome], memory: list[dict], duration_s: float) -> dict:
    """The soak's targets. The latency windows are the first and last 10 minutes (a third each for short runs)."""
    failed = [o for o in outcomes if o.status is not None and o.status >= 500]
    window = min(600.0, duration_s / 3)
    p99 = lambda lo, hi: _p99([o.latency for o in outcomes if o.kind in ("whole", "stream") and o.status == 200
                                and o.latency is not None and lo <= o.sent < hi])
    first, last = p99(0, window), p99(duration_s - window, duration_s)
    growth = _rss_growth(memory, duration_s)
    return {
        "lost": sum(o.status is None for o in outcomes),
        "5xx_without_tokens": sum(not o.tokens for o in failed),
        "hostile_5xx": sum(o.kind == "hostile" for o in failed),
        "p99_first_s": first, "p99_last_s": last,
        "p99_ratio": last / first if first and last else None,
        "rss_growth_last_half": growth,
        "met": {
            "lost = 0": not any(o.status is None for o in outcomes),
            "5xx only after streamed tokens": all(o.tokens for o in failed),
            "p99 last <= 1.2x first": bool(first and last and last <= 1.2 * first),
            "RSS growth < 5% over the last half": growth is not None and growth < 0.05,
        },
    }


def _p99(values: list[float]) -> float | None:
    return float(np.percentile(values, 99)) if values else None


def _rss_growth(memory: list[dict], duration_s: float) -> float | None:
    """The largest RSS growth of one worker over the last half of the run, from its first sample there to its last.
    A worker that replaced a killed one counts from WARM_S after it appeared: it grows while it warms up."""
    growth = None
    for pid in {s["pid"] for s in memory}:
        samples = [s for s in memory if s["pid"] == pid]
        replacement = samples[0]["at"] > REPLACED_AFTER_S  # not there when the run began
        since = max(duration_s / 2, samples[0]["at"] + WARM_S) if replacement else duration_s / 2
        later = [s["rss_mb"] for s in samples if s["at"] >= since]
        if len(later) >= 2:
            growth = max(growth or float("-inf"), (later[-1] - later[0]) / later[0])
    return growth


def write(out: Path, summary: dict, outcomes: list[Outcome], memory: list[dict], events: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({**summary, "memory": memory, "faults": events}, indent=1))
    (out / "soak.md").write_text(_markdown(summary, events))
    _plot(out / "soak.png", outcomes, memory, events)


def _markdown(summary: dict, events: list[dict]) -> str:
    a, t = summary["account"], summary["targets"]
    lines = [f"# Soak, {summary['minutes']} min at {summary['rate']:.2f} req/s (80% of {summary['capacity']:.2f})", "",
             f"requests {a['requests']}: answered {a['answered']}, lost {a['lost']}", "",
             "| refused (4xx) | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(a["refused_4xx"].items())], "",
             "| failed (5xx) and why | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(a["failed_5xx"].items())],
             "", "| fault | at (s) | what |", "|---|---|---|", *[f"| {e['fault']} | {e['at']:.0f} | {e['what']} |" for e in events],
             "", "| target | met |", "|---|---|", *[f"| {k} | {v} |" for k, v in t["met"].items()], "",
             f"p99 latency first/last window: {t['p99_first_s']} / {t['p99_last_s']} s; "
             f"worker RSS growth over the last half: {t['rss_growth_last_half']}"]
    return "\n".join(lines) + "\n"


def _plot(path: Path, outcomes: list[Outcome], memory: list[dict], events: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for kind, colour in (("whole", "tab:blue"), ("stream", "tab:green")):
        done = [(o.sent, o.latency) for o in outcomes if o.kind == kind and o.status == 200 and o.latency is not None]
        if done:
            lat.scatter(*zip(*done), s=4, c=colour, label=f"{kind} latency")
    bad = [(o.sent, o.latency or 0) for o in outcomes if o.status is None or o.status >= 500]
    if bad:
        lat.scatter(*zip(*bad), s=12, c="tab:red", marker="x", label="5xx / lost")
    lat.set_ylabel("latency (s)")
    lat.legend(loc="upper left")
    for pid in sorted({s["pid"] for s in memory}):
        points = [(s["at"], s["rss_mb"]) for s in memory if s["pid"] == pid]
        mem.plot(*zip(*points), label=f"worker {pid}")
    mem.set_ylabel("worker RSS (MiB)")
    mem.set_xlabel("time since start (s)")
    for axis in (lat, mem):
        for e in events:
            axis.axvline(e["at"], color="grey", linestyle="--")
            axis.text(e["at"], axis.get_ylim()[1], e["fault"], rotation=90, va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
