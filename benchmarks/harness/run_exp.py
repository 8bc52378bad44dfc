"""S-LoRA's experiment runner against the fair_lora service (start it with launch_server.py first):

    python run_exp.py --debug --model-setting Demo        # one short configuration (about a minute on a CPU)
    python run_exp.py --fair --model-setting S1           # Fair-SLoRA: adapters {10,50,100} x alpha {.1,.2,.5,1}
    python run_exp.py --suite alpha --model-setting S1    # S-LoRA's suites: num-adapter, alpha, cv, req-rate
    python run_exp.py --suite rate-sweep --alphas 0.1 1   # raise the request rate until the service saturates

Each configuration replays its trace (benchmarks/common/trace.py) over HTTP with streaming, polls GET /stats about once a
second, and appends one JSON line {"config": {...}, "result": {...}} to the output file (default
all_results_<mode>.jsonl; debug_all_results_<mode>.jsonl with --debug, as S-LoRA names it). Plot them with
`python -m benchmarks.harness.plot_exp FILE...`. The result has S-LoRA's fields, computed as its run_exp.py does (a request
that did not complete counts as aborted: satisfaction and attainment 0, no latency), then this client's own.
"""
import argparse
import asyncio
import datetime
import itertools
import json
import math
import platform
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common.http_load import LoadRequest, RequestRecord, percentile, run_load, summarize
from benchmarks.common.report import git_commit, package_version
from benchmarks.common.synthetic_assets import SETTINGS, SYNTHETIC, adapter_names
from benchmarks.common.trace import SEED, TraceConfig, TraceRequest, generate_requests, prompt_token_ids

SLO_S = 6.0  # S-LoRA's first-token SLO (slora/utils/metric.py)
WARMUP_S = 10  # S-LoRA's strip_throughput leaves out this long (and its requests) at each end
STATS_INTERVAL_S = 1.0
SERVICE_BINS = 60  # per trace duration, for the service each adapter received over time
FULL, SHORT = (8, 512), (8, 256)  # S-LoRA's lengths; the debug run's, which fit the demo's 512-token context


def _grid(suite: str, num_adapters, alpha, req_rate, cv, duration, lengths=FULL) -> list[tuple[str, TraceConfig]]:
    return [(suite, TraceConfig(n, a, r, c, duration, lengths, lengths))
            for n, a, r, c in itertools.product(num_adapters, alpha, req_rate, cv)]


# name -> (num_adapters, alpha, req_rate, cv, duration): S-LoRA's A10G suites (paper_suite) and Fair-SLoRA's.
SUITES = {
    "debug": ([8], [0.1], [2], [1], 30),
    "fair": ([10, 50, 100], [0.1, 0.2, 0.5, 1], [2], [1], 300),
    "num-adapter": ([1, 20, 50, 100, 200], [1], [2], [1], 300),
    "alpha": ([200], [0.1, 0.3, 0.6, 1], [2], [1], 300),
    "cv": ([200], [1], [2], [1, 2, 4, 6, 8], 300),
    "req-rate": ([200], [1], [1, 1.5, 2, 2.5], [1], 300),
    "rate-sweep": ([100], [1], [1], [1], 120),  # req_rate: where the sweep starts
}
SWEEP_DOUBLINGS, SWEEP_HALVINGS, SWEEP_MIN_REQUESTS = 8, 6, 50
PACKAGES = ("fair_lora", "ray", "torch", "triton", "transformers", "peft", "numpy", "aiohttp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--debug", action="store_true", help="one short configuration (8 adapters, 30 s)")
    which.add_argument("--fair", action="store_true", help="the Fair-SLoRA suite")
    which.add_argument("--suite", choices=[s for s in SUITES if s not in ("debug", "fair")])
    p.add_argument("--model-setting", default="S1", choices=SETTINGS, help="names the adapters as launch_server did")
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--output", default=None)
    p.add_argument("--append", action="store_true", help="keep the output file; skip configurations it holds")
    p.add_argument("--duration-scale", type=float, default=1.0, help="shortens every trace (smoke runs)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--mode", choices=("fair", "slora"), default=None,
                   help="the server's mode, when its /stats does not say (then required)")
    for name in ("num-adapters", "alphas", "req-rates", "cvs"):
        p.add_argument(f"--{name}", type=float, nargs="+", default=None, help="replaces the suite's values")
    p.add_argument("--lengths", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="input and output lengths in [LO, HI) instead of the suite's (e.g. to fit a short context)")
    p.add_argument("--min-pace", type=float, default=0.9,
                   help="rate sweep: a rate is sustained while requests complete at least this fast, relative to "
                        "their arrivals (completion_pace), and --min-attainment of them meet the 6 s TTFT SLO")
    p.add_argument("--min-attainment", type=float, default=0.9)
    p.add_argument("--sweep-refine", type=int, default=2, help="rate sweep: bisections after the doubling")
    p.add_argument("--sweep-probe-s", type=float, default=60.0,
                   help="rate sweep: the shortest probe, whatever --duration-scale says (the pace test needs probes "
                        "several times longer than the slowest request: 12 s probes misjudged an H200 that kept up)")
    opts = p.parse_args(argv)
    opts.suite = "debug" if opts.debug else "fair" if opts.fair else opts.suite or "fair"
    return opts


def configs(opts: argparse.Namespace) -> list[tuple[str, TraceConfig]]:
    num_adapters, alpha, req_rate, cv, duration = SUITES[opts.suite]
    num_adapters = [int(n) for n in opts.num_adapters] if opts.num_adapters else num_adapters
    lengths = tuple(opts.lengths) if opts.lengths else SHORT if opts.suite == "debug" else FULL
    grid = _grid(opts.suite, num_adapters, opts.alphas or alpha, opts.req_rates or req_rate, opts.cvs or cv,
                 duration, lengths)
    return [(suite, config.scaled(opts.duration_scale)) for suite, config in grid]


# ---- the server -------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    base_model: str
    adapters: list[str]  # as GET /v1/models lists them
    max_model_len: int
    args: dict | None  # the app's args, when /stats reports them
    mode: str
    num_workers: int
    device_names: list[str]  # the workers' accelerators, when /stats reports them


def probe(url: str, mode_flag: str | None) -> Server:
    try:
        models = httpx.get(f"{url}/v1/models", timeout=30).raise_for_status().json()["data"]
        stats = httpx.get(f"{url}/stats", timeout=30).raise_for_status().json()
    except httpx.HTTPError as error:
        raise SystemExit(f"no fair_lora service answers at {url} ({error}): start it with launch_server.py") from None
    args = stats.get("args")
    mode = (args or {}).get("mode")
    if mode and mode_flag and mode != mode_flag:
        raise SystemExit(f"--mode {mode_flag}, but the server at {url} runs mode {mode}")
    if not (mode or mode_flag):
        raise SystemExit(f"the server at {url} does not report its mode in /stats: pass --mode fair|slora")
    devices = sorted({w["device_name"] for w in stats["workers"] if w.get("device_name")})
    return Server(url, models[0]["id"], [m["id"] for m in models[1:]], models[0]["max_model_len"], args,
                  mode or mode_flag, len(stats["workers"]), devices)


def adapter_sources(setting: str, served: list[str]) -> list[str]:
    """The source adapters whose copies launch_server named `<source>-<i>`, in its order."""
    if setting in SYNTHETIC:
        return list(SYNTHETIC[setting][1].values())
    if setting == "Demo":
        return [f"adapter-{i}" for i in range(6)]
    # Real: launch_server's order is that of its --adapter-dir flags, which the server does not tell; sorted.
    return sorted({name.rsplit("-", 1)[0] for name in served if name.rsplit("-", 1)[-1].isdigit()})


def check(server: Server, setting: str, plan: list[tuple[str, TraceConfig]]) -> None:
    """Every configuration fits the server: its adapters are served, its longest request fits the context."""
    sources = adapter_sources(setting, server.adapters)
    for _, config in plan:
        missing = sorted(set(adapter_names(sources, config.num_adapters)) - set(server.adapters))
        if missing:
            raise SystemExit(f"{config.num_adapters} adapters of setting {setting} needed, but the server lacks "
                             f"{len(missing)} ({', '.join(missing[:3])}, ...): launch it with --num-adapter "
                             f"{config.num_adapters} --model-setting {setting}")
        longest = config.input_range[1] - 1 + config.output_range[1] - 1
        if longest > server.max_model_len:
            raise SystemExit(f"requests up to {longest} tokens, but the server's context is {server.max_model_len}")


async def poll_stats(client: httpx.AsyncClient, origin: float, done: asyncio.Event) -> list[dict]:
    """The popularity plan, each worker's merged adapter and switch count, about every STATS_INTERVAL_S, until
    `done`."""
    samples = []
    while not done.is_set():
        t = time.perf_counter() - origin
        try:
            stats = (await client.get("/stats")).raise_for_status().json()
            plan = (stats.get("popularity") or {}).get("plan")
            shares = (stats.get("popularity") or {}).get("shares") or {}
            top = max(shares.items(), key=lambda kv: kv[1], default=None)
            workers = sorted(stats["workers"], key=lambda w: w.get("worker", 0))
            samples.append({"t": round(t, 3), "plan": plan, "hot": [w.get("hot_adapter") for w in workers],
                            "switches": [w.get("switches") for w in workers], "top_share": top})
        except (httpx.HTTPError, ValueError, KeyError) as error:
            samples.append({"t": round(t, 3), "error": f"{type(error).__name__}: {error}"})
        try:
            await asyncio.wait_for(done.wait(), STATS_INTERVAL_S)
        except asyncio.TimeoutError:
            pass
    return samples


# ---- one configuration ----------------------------------------------------------------------------------


async def replay(server: Server, names: list[str], trace: list[TraceRequest], label: str):
    requests = [LoadRequest(prompt_token_ids(r.prompt_len), None if r.adapter_index is None else
                            names[r.adapter_index], r.output_len) for r in trace]
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        origin = time.perf_counter()
        poller = asyncio.create_task(poll_stats(client, origin, done))
        records = await run_load(server.url, requests, arrivals=[r.req_time for r in trace], label=label,
                                 origin=origin)
        total_time = time.perf_counter() - origin
        done.set()
        return records, total_time, await poller


def slora_result(trace: list[TraceRequest], records: list[RequestRecord], total_time: float, rate: float) -> dict:
    """S-LoRA's get_res_stats: lengths are the trace's, aborted requests score 0 satisfaction and attainment."""
    done = [(t, r) for t, r in zip(trace, records) if r.ok]
    num_abort = len(records) - len(done)
    latency = [r.latency for _, r in done]
    ttft = [r.ttft for _, r in done]
    warmup_num = int(rate * WARMUP_S)
    satisfaction = [1 - (x / SLO_S) ** 2 if x < SLO_S else 0.0 for x in ttft] + [0.0] * num_abort
    attainment = [float(x < SLO_S) for x in ttft] + [0.0] * num_abort

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {
        "total_time": total_time,
        "num_abort": num_abort,
        "throughput": len(done) / total_time,
        # None where S-LoRA's formula divides by zero or less: runs no longer than the two warm-up windows.
        "strip_throughput": (len(done) - 2 * warmup_num) / (total_time - 2 * WARMUP_S)
        if total_time > 2 * WARMUP_S else None,
        "avg_latency": mean(latency),
        "avg_per_token_latency": mean([r.latency / (t.prompt_len + t.output_len) for t, r in done]),
        "avg_per_output_token_latency": mean([r.latency / t.output_len for t, r in done]),
        "avg_first_token_latency": mean(ttft),
        "avg_satisfaction": mean(satisfaction),
        "avg_attainment": mean(attainment),
    }


def completion_pace(trace: list[TraceRequest], records: list[RequestRecord]) -> float | None:
    """Requests completed per request arrived one latency earlier, over the last 90% of the arrivals' span.

    A service that keeps up completes each request a latency after it arrived, so the completions in a window
    match the arrivals in the same window shifted back by the mean latency (that of the requests that arrived
    in the first 10% of the span, before any backlog); an overloaded one completes fewer, at its capacity, and
    its backlog drains only after the last arrival. Neither that drain nor, with the shift, the requests still
    in flight at the end count against a short probe (unshifted, a 12 s probe of requests that take 5 s each
    read 0.6 on a service that kept up)."""
    if not trace:
        return None
    end = trace[-1].req_time
    early = [r.latency for t, r in zip(trace, records) if r.ok and t.req_time <= 0.1 * end and r.latency is not None]
    shift = min(sum(early) / len(early), 0.9 * end) if early else 0.0
    start = max(0.1 * end - shift, 0.0)
    arrived = sum(start <= t.req_time <= end - shift for t in trace)
    completed = sum(r.ok and start + shift <= r.end_time <= end for r in records)
    return completed / arrived if arrived else None


def per_token_percentiles(trace: list[TraceRequest], records: list[RequestRecord]) -> dict:
    per_token = [r.latency / (t.prompt_len + t.output_len) for t, r in zip(trace, records) if r.ok]
    return {f"per_token_latency_p{q}": percentile(per_token, q) for q in (50, 99)}


def service_over_time(records: list[RequestRecord], base_model: str, bin_s: float) -> dict:
    """Tokens each adapter received per bin: its prompt when the first token came back, then every output token."""
    bins = max(1, math.ceil(max((r.end_time or 0.0 for r in records), default=0.0) / bin_s))
    service: dict[str, dict[str, list[int]]] = {"input_tokens": {}, "output_tokens": {}}
    for r in records:
        if not r.chunk_times:
            continue
        name = r.adapter or base_model
        inputs = service["input_tokens"].setdefault(name, [0] * bins)
        outputs = service["output_tokens"].setdefault(name, [0] * bins)
        inputs[min(int(r.chunk_times[0] / bin_s), bins - 1)] += r.prompt_tokens or 0
        for t, n in zip(r.chunk_times, r.chunk_tokens):
            outputs[min(int(t / bin_s), bins - 1)] += n
    return {"bin_s": bin_s, **service}


def run_one(server: Server, opts: argparse.Namespace, suite: str, config: TraceConfig, label: str) -> dict:
    names = adapter_names(adapter_sources(opts.model_setting, server.adapters), config.num_adapters)
    trace = generate_requests(config, opts.seed)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records, total_time, samples = asyncio.run(replay(server, names, trace, label))
    result = {
        **slora_result(trace, records, total_time, config.req_rate),
        **summarize(records, total_time),
        **per_token_percentiles(trace, records),
        "completion_pace": completion_pace(trace, records),
        "short_outputs": sum(r.ok and r.output_tokens != t.output_len for t, r in zip(trace, records)),
        "ttfts": [round(r.ttft, 4) for r in records if r.ok and r.ttft is not None],
        "hot_timeline": samples,
        "service": service_over_time(records, server.base_model, max(1.0, config.duration / SERVICE_BINS)),
    }
    return {"config": config_record(server, opts, suite, config, len(trace), started), "result": result}


def config_record(server: Server, opts: argparse.Namespace, suite: str, config: TraceConfig, n: int,
                  started: str) -> dict:
    args = server.args or {}
    return {
        **config.to_dict(),
        "suite": suite, "seed": opts.seed, "duration_scale": opts.duration_scale, "num_requests": n,
        "model_setting": opts.model_setting, "mode": server.mode, "server": server.url,
        "base_model": server.base_model, "max_model_len": server.max_model_len, "num_workers": server.num_workers,
        "served_adapters": len(server.adapters), "scheduling_policy": args.get("scheduling_policy"),
        "device": args.get("device"), "device_names": server.device_names, "dtype": args.get("dtype"),
        "server_args": server.args,
        "client_host": socket.gethostname(), "python": platform.python_version(), "started_utc": started,
        "slo_s": SLO_S,
        "git_commit": git_commit(), "versions": {p: package_version(p) for p in PACKAGES},
    }


def config_key(config: dict) -> tuple:
    """What makes two records the same configuration, for --append."""
    keys = ("suite", "num_adapters", "alpha", "req_rate", "cv", "duration", "seed", "mode", "model_setting")
    return tuple(json.dumps(config.get(k)) for k in keys)


# ---- suites -----------------------------------------------------------------------------------------------


def run_suite(server: Server, opts: argparse.Namespace, output: Path) -> None:
    plan = configs(opts)
    check(server, opts.model_setting, plan)
    have = set()
    if opts.append and output.exists():
        have = {config_key(json.loads(line)["config"]) for line in output.read_text().splitlines() if line.strip()}
    elif output.exists():
        output.unlink()  # as S-LoRA: a run without --append starts the file afresh
    if opts.suite == "rate-sweep":
        for base in plan:
            sweep(server, opts, output, base[1])
        return
    for i, (suite, config) in enumerate(plan, 1):
        record = {"suite": suite, **config.to_dict(), "seed": opts.seed, "mode": server.mode,
                  "model_setting": opts.model_setting}
        if config_key(record) in have:
            print(f"[{i}/{len(plan)}] {describe(config)}: in {output} already, skipped", file=sys.stderr)
            continue
        write(output, run_one(server, opts, suite, config, f"[{i}/{len(plan)}] {describe(config)}: "))


def sweep(server: Server, opts: argparse.Namespace, output: Path, base: TraceConfig) -> None:
    """Double the rate while it is sustained (see --min-pace), or halve it while it is not, until that flips; then
    bisect between the highest sustained rate and the next higher, unsustained one. A probe lasts long enough for
    SWEEP_MIN_REQUESTS requests (with fewer, one request more or less in the window swings the pace too far) and
    at least --sweep-probe-s."""
    sustained: dict[float, bool] = {}

    def probe_rate(rate: float) -> bool:
        config = replace(base, req_rate=rate, duration=max(base.duration, SWEEP_MIN_REQUESTS / rate, opts.sweep_probe_s))
        record = run_one(server, opts, "rate-sweep", config, f"[sweep {len(sustained) + 1}] {describe(config)}: ")
        result = record["result"]
        sustained[rate] = result["sustained"] = ((result["completion_pace"] or 0.0) >= opts.min_pace
                                                 and (result["avg_attainment"] or 0.0) >= opts.min_attainment)
        write(output, record)
        return sustained[rate]

    rate = base.req_rate
    first = probe_rate(rate)
    for _ in range(SWEEP_DOUBLINGS if first else SWEEP_HALVINGS):
        rate = rate * 2 if first else rate / 2
        if probe_rate(rate) != first:
            break
    for _ in range(opts.sweep_refine):
        good = max((r for r, ok in sustained.items() if ok), default=None)
        above = [r for r, ok in sustained.items() if not ok and good is not None and r > good]
        if not above:
            break
        probe_rate(round((good + min(above)) / 2, 4))
    good = max((r for r, ok in sustained.items() if ok), default=None)
    print(f"rate sweep ({describe(base)}): highest sustained rate {good if good is not None else 'none'} req/s",
          file=sys.stderr)


def describe(config: TraceConfig) -> str:
    return (f"N={config.num_adapters} alpha={config.alpha:g} rate={config.req_rate:g} cv={config.cv:g} "
            f"{config.duration:g}s")


def write(output: Path, record: dict) -> None:
    with output.open("a") as f:
        f.write(json.dumps(record) + "\n")
    r = record["result"]
    ttft = "n/a" if r["avg_first_token_latency"] is None else f"{r['avg_first_token_latency']:.2f}"
    print(f"  -> {r['completed']}/{r['num_requests']} completed, {r['throughput']:.2f} req/s, "
          f"{r['output_tokens_per_s']:.0f} tok/s, avg TTFT {ttft} s, attainment {r['avg_attainment']}, "
          f"429s {r['num_429']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    server = probe(opts.server.rstrip("/"), opts.mode)
    output = Path(opts.output or f"{'debug_' if opts.debug else ''}all_results_{server.mode}.jsonl")
    run_suite(server, opts, output)
    print(f"results: {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
