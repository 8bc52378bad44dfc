"""The service against its own engine: the same requests through LLMEngine's public API (in this process) and
through the Ray Serve app over HTTP (one worker, the same engine settings), side by side in one run.

    python -m benchmarks.serving.bench --out DIR                      # the H200 run: Llama-2-7B shapes, dummy weights
    python -m benchmarks.serving.bench --out DIR --tiny               # the CPU smoke run: the demo model

For each case (base, fair at alpha 0.02, slora at alpha 1) and each number of requests in flight (1, 16, 64,
256): tokens/s, TTFT and inter-token latency p50/p99 on both sides, HTTP streaming and not, and HTTP / engine.
HTTP goes through Serve's proxy and, in Serve's throughput mode (deployments/serve_env.py), also straight to
the ingress replica's own HTTP server ("direct"); the first and later waves go through the proxy's route.
Right after the service reports ready a first wave (64 in flight, streaming) runs, and the same wave again at
the end: their ratio shows start-up work left inside serving. Writes serve_bench_<date>_<device>.json, .md and
.png into DIR.
"""
import argparse
import asyncio
import dataclasses
import gc
import json
import time
from pathlib import Path

import httpx
import torch

from benchmarks.common.http_load import run_load, summarize
from benchmarks.serving.process_cpu import cpu_usage, snapshot
from benchmarks.serving.report import write_outputs
from benchmarks.serving.workload import Case, engine_closed_loop, hot_share, requests_for
from deployments.app_args import AppArgs
from fair_lora import LLMEngine

WAVE_CONCURRENCY = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the JSON, markdown and plot")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: demo model, few short requests")
    p.add_argument("--cases", default="base,fair-0.02,slora-1")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--prompt-len", type=int, default=100)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--requests-per-slot", type=int, default=2, help="requests = max(min-requests, this × in flight)")
    p.add_argument("--min-requests", type=int, default=32)
    p.add_argument("--model-config", default="configs/llama-2-7b.json", help="config.json of the dummy-weight model")
    p.add_argument("--num-adapters", type=int, default=20)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cpu", action="store_true", help="run on the CPU (the demo model) even where CUDA is present")
    if p.parse_known_args(argv)[0].tiny:  # the smoke run's defaults; flags given explicitly still win
        p.set_defaults(cases="base,fair-0.02", concurrency="1,8", prompt_len=24, output_len=8, min_requests=8,
                       max_num_seqs=16, cpu=True)
    return p.parse_args(argv)


def app_args(opts: argparse.Namespace, case: Case, model: str | None, adapters: dict[str, str], demo_dir: str | None) -> dict:
    """The one worker's settings; the engine side uses the same through AppArgs.engine_config()."""
    cuda = torch.cuda.is_available() and not opts.cpu
    return {
        "model": model, "load_format": "dummy" if model else "safetensors", "adapters": adapters, "demo_dir": demo_dir,
        "device": "cuda" if cuda else "cpu", "dtype": "bfloat16" if cuda else "float32", "mode": case.mode,
        "max_num_seqs": opts.max_num_seqs, "max_num_batched_tokens": 4096 if cuda else 1024,
        "max_model_len": 1024 if cuda else 256, "max_waiting": 4096, "max_lora_rank": max(opts.rank, 16),
        "max_adapter_slots": len(adapters) + 1, "cpu_threads": None if cuda else 1,
        "workers": {"num_replicas": 1, "num_cpus": 1 if cuda else 0.1, "num_gpus": 1 if cuda else 0,
                    "max_ongoing_requests": 4 * opts.max_num_seqs + 64},
        "ingress": {"num_replicas": 1, "num_cpus": 1 if cuda else 0.1},
        "popularity": {"window_s": 30.0, "window_requests": 1000, "min_requests": 10, "min_dwell_s": 5.0},
    }


def measure_engine(args: dict, case: Case, workloads: dict[int, list]) -> dict[int, dict]:
    """Each concurrency's workload through an engine built as the worker builds its own (the engine picks its
    hot adapter from its own window here, the worker from the cluster's plan: both from the same traffic)."""
    config = dataclasses.replace(AppArgs.model_validate(args).engine_config(), auto_hot=case.mode == "fair")
    threads = torch.get_num_threads()
    if args["cpu_threads"]:
        torch.set_num_threads(args["cpu_threads"])
    engine = LLMEngine(config)
    try:
        runs = {}
        for concurrency, requests in workloads.items():
            before = engine.stats()["step_totals"]
            records, seconds = engine_closed_loop(engine, requests, concurrency)
            steps = step_difference(before, engine.stats()["step_totals"])
            runs[concurrency] = {**summarize(records, seconds), "seconds": seconds, "steps": steps}
            print(f"  engine  {case.name:>10} c={concurrency:<4} {runs[concurrency]['output_tokens_per_s']:9.1f} tok/s  "
                  f"{_steps_line(steps)}", flush=True)
        return runs
    finally:
        torch.set_num_threads(threads)
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_http(
    url: str, case: Case, workloads: dict[int, list], streams: tuple[bool, ...], route: str = "proxy"
) -> dict:
    """The same workloads over HTTP, streamed and not; plus the first and a later wave of the same requests."""
    wave = workloads.get(WAVE_CONCURRENCY) or workloads[max(workloads)]
    wave_c = WAVE_CONCURRENCY if WAVE_CONCURRENCY in workloads else max(workloads)
    runs: dict = {"first_wave": _http_run(url, wave, wave_c, True, f"{case.name} first wave ")}
    for concurrency, requests in workloads.items():
        for stream in streams:
            key = f"{concurrency}/{'stream' if stream else 'whole'}"
            runs[key] = _http_run(url, requests, concurrency, stream, f"{case.name} c={concurrency} {key} ")
            busy = " ".join(f"{role} {u['max_busy']:.2f}" for role, u in runs[key]["cpu"].items() if u["max_busy"] > 0.05)
            print(f"  {route:7} {case.name:>10} c={concurrency:<4} {'stream' if stream else 'whole':6} "
                  f"{runs[key]['output_tokens_per_s']:9.1f} tok/s  {_steps_line(runs[key]['steps'])}  "
                  f"busiest process per role (CPU s/s): {busy}", flush=True)
    runs["later_wave"] = _http_run(url, wave, wave_c, True, f"{case.name} later wave ")
    return runs


def _http_run(url: str, requests: list, concurrency: int, stream: bool, label: str) -> dict:
    """One closed-loop run, with each serving process's CPU use over it (which one saturates) and the steps
    the worker's engine took for it."""
    totals = _worker_step_totals(url)
    before, start = snapshot(), time.perf_counter()
    records = asyncio.run(run_load(url, requests, concurrency=concurrency, stream=stream, label=label))
    seconds = time.perf_counter() - start
    cpu = cpu_usage(before, snapshot(), seconds, len(requests))
    steps = step_difference(totals, _worker_step_totals(url))
    return {**summarize(records, seconds), "seconds": seconds, "cpu": cpu, "steps": steps}


def _worker_step_totals(url: str) -> dict:
    stats = httpx.get(f"{url}/stats", timeout=30).json()
    return stats["workers"][0]["step_totals"]


def _steps_line(steps: dict) -> str:
    return (f"{steps['steps']} steps ({steps['decode_only_share']:.0%} decode-only, {steps['tokens_per_step']:.0f} "
            f"tok, {steps['corrected_share']:.0%} corrected, {steps['ms_per_step']:.1f} ms)")


def step_difference(before: dict, after: dict) -> dict:
    """The engine steps between two readings of its step totals: how many, how many could replay a decode
    graph, tokens and seconds per step, and the share of tokens that took the correction path."""
    d = {k: after[k] - before[k] for k in after}
    steps = max(d["steps"], 1)
    return {"steps": d["steps"], "decode_only_share": d["decode_only_steps"] / steps,
            "tokens_per_step": d["tokens"] / steps, "ms_per_step": 1000 * d["seconds"] / steps,
            "corrected_share": d["corrected_tokens"] / max(d["tokens"], 1)}


def ratios(engine: dict[int, dict], http: dict) -> dict:
    """HTTP / engine at every concurrency: tokens/s streamed and not, TTFT p50 streamed."""
    out = {}
    for concurrency, e in engine.items():
        for kind in ("stream", "whole"):
            h = http.get(f"{concurrency}/{kind}")
            if h and e["output_tokens_per_s"]:
                out[f"tok_s_{kind}_c{concurrency}"] = h["output_tokens_per_s"] / e["output_tokens_per_s"]
        h = http.get(f"{concurrency}/stream")
        if h and h["ttft_p50"] and e["ttft_p50"]:
            out[f"ttft_p50_c{concurrency}"] = h["ttft_p50"] / e["ttft_p50"]
    first, later = http["first_wave"]["output_tokens_per_s"], http["later_wave"]["output_tokens_per_s"]
    out["first_over_later_wave"] = first / later if later else None
    return out


def run_case(opts, case: Case, service, assets: tuple) -> dict:
    """Deploys the app for this case on `service` (a LocalService), measures, and removes it. HTTP goes through
    Serve's proxy (the port users are given) and, where the ingress serves HTTP itself, straight to it."""
    model, adapters, demo_dir = assets
    args = app_args(opts, case, model, adapters, demo_dir)
    names = sorted(adapters) if adapters else []
    workloads = {}
    for c in [int(x) for x in opts.concurrency.split(",")]:
        count = max(opts.min_requests, opts.requests_per_slot * c)
        workloads[c] = requests_for(case, names, count, opts.prompt_len, opts.output_len)
    engine = measure_engine(args, case, workloads)
    undeploy = service.deploy(args)
    try:
        routes = {"proxy": service.url, "direct": service.direct_url()}
        http = {route: measure_http(url, case, workloads, (True, False), route)
                for route, url in routes.items() if url is not None}
    finally:
        undeploy()
    share = hot_share(next(iter(workloads.values())))
    return {"case": case.name, "mode": case.mode, "alpha": case.alpha, "hot_share": share, "engine": engine,
            "http": http, "ratios": {route: ratios(engine, runs) for route, runs in http.items()}}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.serving.service import LocalService, bench_assets

    opts = parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    assets = bench_assets(opts)
    results = {"settings": {k: v for k, v in vars(opts).items() if k != "out"}, "cases": []}
    with LocalService(opts.port, cpus=2 if opts.cpu else 8) as service:
        for name in opts.cases.split(","):
            case = Case.parse(name)
            print(f"case {case.name}", flush=True)
            results["cases"].append(run_case(opts, case, service, assets))
            paths = write_outputs(results, out)
    print(json.dumps({c["case"]: c["ratios"] for c in results["cases"]}, indent=1))
    print("wrote", *map(str, paths.values()))


if __name__ == "__main__":
    main()
