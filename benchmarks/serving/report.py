"""The serving benchmark's outputs: JSON (everything measured, with date, device and versions), a markdown table
of HTTP against the engine per case and concurrency, and a plot of tokens/s and TTFT against concurrency."""
import json
from pathlib import Path

import torch

from benchmarks.common.report import figure, output_stem, run_meta, write_files

TARGET_TOK_S = 0.90  # HTTP / engine tokens/s at 64 and 256 in flight (H200); 0.80 on the CPU demo
TARGET_TTFT = 1.2  # HTTP / engine TTFT p50
TARGET_WAVE = 0.90  # the first wave after ready, over a later one


def meta() -> dict:
    return run_meta(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    results.setdefault("meta", meta())
    m = results["meta"]
    stem = output_stem("serve_bench", m["date"], m["device_name"], bool(results["settings"].get("tiny")))
    return write_files(out, stem, results, markdown(results), lambda path: plot(results, path))


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [
        f"# Serving benchmark: HTTP (Ray Serve, 1 worker) against LLMEngine, {m['date']}, {m['device_name']}",
        "", f"versions: {json.dumps(m['versions'])}", f"settings: {json.dumps(results['settings'])}", "",
        "| case | route | hot share | in flight | engine tok/s | HTTP stream tok/s | ratio | HTTP whole tok/s | ratio "
        "| TTFT p50 engine / HTTP (s) | ratio | ITL p50 engine / HTTP (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        for route, http in case["http"].items():
            r = case["ratios"][route]
            for c, e in case["engine"].items():
                s, w = http.get(f"{c}/stream", {}), http.get(f"{c}/whole", {})
                lines.append(
                    f"| {case['case']} | {route} | {case['hot_share']:.2f} | {c} | {e['output_tokens_per_s']:.0f} "
                    f"| {s.get('output_tokens_per_s', 0):.0f} | {_f(r.get(f'tok_s_stream_c{c}'))} "
                    f"| {w.get('output_tokens_per_s', 0):.0f} | {_f(r.get(f'tok_s_whole_c{c}'))} "
                    f"| {_f(e['ttft_p50'], 3)} / {_f(s.get('ttft_p50'), 3)} | {_f(r.get(f'ttft_p50_c{c}'))} "
                    f"| {_ms(e['inter_token_latency_p50'])} / {_ms(s.get('inter_token_latency_p50'))} |"
                )
            lines.append(f"| {case['case']} | {route} | | first wave / later wave | | | "
                         f"{_f(r['first_over_later_wave'])} | | | | | |")
    lines += ["", *steps_table(results), "", *cpu_table(results)]
    failed = {c["case"]: sum(run["failed"] for http in c["http"].values() for run in http.values())
              for c in results["cases"]}
    lines += ["", f"failed HTTP requests per case: {json.dumps(failed)}",
              "routes: proxy = Serve's HTTP proxy (the port users are given), direct = the ingress replica's own "
              "HTTP server (Serve's direct ingress, on in its throughput mode)",
              f"targets: HTTP/engine tok/s >= {TARGET_TOK_S} at 64 and 256 in flight (H200; 0.80 CPU demo), TTFT p50 "
              f"<= {TARGET_TTFT}x the engine's, first wave >= {TARGET_WAVE}x a later wave"]
    return "\n".join(lines) + "\n"


def steps_table(results: dict) -> list[str]:
    """The engine's steps per run: mixed prefill+decode steps cannot replay a decode graph and cost more."""
    rows = ["Engine steps per run (steps; share that were decode-only; tokens and milliseconds per step; share of "
            "tokens that took the correction path):", "",
            "| case | side | run | steps | decode-only | tokens / step | ms / step | corrected |",
            "|---|---|---|---|---|---|---|---|"]

    def row(case: str, side: str, run_key: str, steps: dict | None) -> None:
        if steps:
            rows.append(f"| {case} | {side} | {run_key} | {steps['steps']} | {steps['decode_only_share']:.2f} "
                        f"| {steps['tokens_per_step']:.1f} | {steps['ms_per_step']:.2f} "
                        f"| {_f(steps.get('corrected_share'))} |")

    for case in results["cases"]:
        for c, e in case["engine"].items():
            row(case["case"], "engine", str(c), e.get("steps"))
        for route, http in case["http"].items():
            for key, run in http.items():
                row(case["case"], route, key, run.get("steps"))
    return rows


CPU_ROLES = ("client", "proxy", "ingress", "worker", "engine_core")


def cpu_table(results: dict) -> list[str]:
    """Each HTTP run's serving processes: the busiest of each role in CPU-seconds per second (1.0: a saturated
    Python process) and the role's CPU milliseconds per request."""
    rows = ["CPU per serving process (busiest process of the role, CPU s/s; and the role's CPU ms per request):", "",
            "| case | route | run | " + " | ".join(CPU_ROLES) + " |", "|---|---|---|" + "---|" * len(CPU_ROLES)]
    for case in results["cases"]:
        for route, http in case["http"].items():
            for key, run in http.items():
                cpu = run.get("cpu") or {}
                cells = [f"{cpu[r]['max_busy']:.2f} / {cpu[r]['ms_per_request']:.1f} ms" if r in cpu else "—"
                         for r in CPU_ROLES]
                rows.append(f"| {case['case']} | {route} | {key} | " + " | ".join(cells) + " |")
    return rows


def _f(x, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _ms(x) -> str:
    return "—" if x is None else f"{1000 * x:.1f}"


def plot(results: dict, path: Path) -> None:
    cases = results["cases"]
    fig = figure(figsize=(5 * len(cases), 7))
    axes = fig.subplots(2, len(cases), squeeze=False)
    for col, case in enumerate(cases):
        cs = sorted(int(c) for c in case["engine"])
        tok, ttft = axes[0][col], axes[1][col]
        tok.plot(cs, [case["engine"][c]["output_tokens_per_s"] for c in cs], "o-", label="engine generate")
        for route, http in case["http"].items():
            for kind in ("stream", "whole"):
                tok.plot(cs, [http[f"{c}/{kind}"]["output_tokens_per_s"] for c in cs], "s--" if route == "proxy"
                         else "^:", label=f"HTTP {kind} ({route})")
            ttft.plot(cs, [http[f"{c}/stream"]["ttft_p50"] for c in cs], "s--", label=f"HTTP stream ({route})")
        ttft.plot(cs, [case["engine"][c]["ttft_p50"] for c in cs], "o-", label="engine")
        tok.set_title(f"{case['case']} (hot share {case['hot_share']:.2f})")
        tok.set_ylabel("output tokens/s")
        ttft.set_ylabel("TTFT p50 (s)")
        for ax in (tok, ttft):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("requests in flight")
            ax.legend(fontsize=8)
    fig.suptitle(f"HTTP vs engine, {results['meta']['device_name']}, {results['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
