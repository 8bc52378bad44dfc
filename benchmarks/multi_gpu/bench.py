"""Several GPU workers, each keeping its own hot adapter merged, and what adapter-aware routing buys.

    python -m benchmarks.multi_gpu.bench --gpus 1 2 4 --out benchmarks/results     # on a host with 4 GPUs
    python -m benchmarks.multi_gpu.bench --gpus 2 --routers default --append ...   # one more deployment into the same file
    python -m benchmarks.multi_gpu.bench --dry-run --out /tmp/multi_gpu             # CPU: the demo, 1 and 2 CPU workers

For each K in --gpus it starts the Ray Serve app with launch_server.py (K workers, one GPU each; random weights of
Llama-2-7B's shapes; 100 rank-16 adapters; mode fair), once with this app's hot-adapter router and, for K >= 2 when
--routers names it, once with Ray Serve's default router. Against each deployment it replays every scenario of
benchmarks/multi_gpu/workload.py over HTTP with run_exp.py's client (streamed /generate, /stats polled every
second). A trace offers --rate-per-gpu times K requests a second, more than a GPU serves, so that every deployment
is saturated and its throughput (completed work over the time to finish it all) is what K workers can serve.

One JSON line per (K, router, scenario) goes to multi_gpu_<date>_<device>.jsonl in --out; with --append a run adds
to the newest such file (a run split over machine sessions) and replaces the lines of what it runs again. The
summary (.json), markdown and plot are made afresh from every line of the file (benchmarks/multi_gpu/report.py).
"""
import argparse
import asyncio
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.common.http_load import summarize
from benchmarks.common.report import REPO, device_slug, git_commit, package_version
from benchmarks.common.synthetic_assets import adapter_names
from benchmarks.common.trace import SEED
from benchmarks.harness.run_exp import PACKAGES, Server, adapter_sources, probe, replay
from benchmarks.multi_gpu.report import write_report
from benchmarks.multi_gpu.workload import (
    SCENARIOS, hot_indices, merged_after, merged_timeline, routing_hits, scenario_trace, switches_per_worker,
)

READY_TIMEOUT_S = 1800.0  # K workers load a 7B model and warm up
STOP_TIMEOUT_S = 120.0
GPU = {"setting": "R16", "num_adapters": 100, "rate_per_gpu": 6.0, "duration": 60.0, "lengths": (8, 512),
       "scenarios": list(SCENARIOS), "server_args": ["--dummy", "--device", "cuda", "--dtype", "bfloat16"]}
# The dry run: the demo model on the CPU, short traces, a short popularity window so that plans change within them.
# It checks the plan and the routing, not whether merges pay on a shared CPU: every assigned merge stays.
DRY = {"setting": "Demo", "num_adapters": 8, "rate_per_gpu": 3.0, "duration": 12.0, "lengths": (8, 48),
       "scenarios": ["two-hot", "shift"], "server_args": ["--device", "cpu", "--num-cpus", "2", "--num-token",
                                                          "4000", "--cpu-threads", "1", "--popularity-window-s", "5",
                                                          "--merge-trial-steps", "0"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="the demo model on K CPU workers (default K: 1 2)")
    p.add_argument("--gpus", type=int, nargs="+", default=None, help="worker counts K to deploy (default 1 2 4)")
    p.add_argument("--workers-per-gpu", type=int, default=1,
                   help="workers sharing a GPU (fractional num_gpus); give --server-arg=--num-token=N with it")
    p.add_argument("--routers", nargs="+", choices=("hot_adapter", "default"), default=["hot_adapter", "default"],
                   help="default runs only at K >= 2, where a choice of worker exists")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=None)
    p.add_argument("--rate-per-gpu", type=float, default=None, help="offered req/s per worker")
    p.add_argument("--duration", type=float, default=None, help="seconds of arrivals per trace")
    p.add_argument("--lengths", type=int, nargs=2, default=None, metavar=("LO", "HI"))
    p.add_argument("--num-adapters", type=int, default=None)
    p.add_argument("--popularity-window-s", type=float, default=None, help="the app's window (default 30 s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--append", action="store_true")
    p.add_argument("--server-arg", action="append", default=[], help="one more launch_server.py flag (repeatable)")
    opts = p.parse_args(argv)
    preset = DRY if opts.dry_run else GPU
    opts.gpus = opts.gpus or ([1, 2] if opts.dry_run else [1, 2, 4])
    opts.scenarios = opts.scenarios or preset["scenarios"]
    opts.rate_per_gpu = opts.rate_per_gpu or preset["rate_per_gpu"]
    opts.duration = opts.duration or preset["duration"]
    opts.lengths = tuple(opts.lengths or preset["lengths"])
    opts.num_adapters = opts.num_adapters or preset["num_adapters"]
    opts.setting = preset["setting"]
    window = ["--popularity-window-s", str(opts.popularity_window_s)] if opts.popularity_window_s else []
    shared = ["--gpus-per-worker", str(1 / opts.workers_per_gpu)] if opts.workers_per_gpu > 1 and not opts.dry_run else []
    opts.server_args = preset["server_args"] + window + shared + opts.server_arg
    return opts


def deployments(opts: argparse.Namespace) -> list[tuple[int, str]]:
    return [(k, router) for k in opts.gpus for router in ("hot_adapter", "default")
            if router in opts.routers and (router == "hot_adapter" or k >= 2)]


# ---- the server -------------------------------------------------------------------------------------------


class LaunchedServer:
    """launch_server.py in a process group of its own, stopped with Ctrl-C; whatever of its Ray processes outlive
    that is killed (only those: they were its descendants while it ran)."""

    def __init__(self, opts: argparse.Namespace, k: int, router: str, log: Path) -> None:
        self.command = [sys.executable, "-m", "benchmarks.harness.launch_server", "--fair_strategy", "--model-setting", opts.setting,
                        "--num-adapter", str(opts.num_adapters), "--num-replicas", str(k), "--router", router,
                        "--port", str(opts.port), *opts.server_args]
        self.log, self.url = log, f"http://127.0.0.1:{opts.port}"
        self.proc: subprocess.Popen | None = None
        self.descendants: list[psutil.Process] = []

    def __enter__(self) -> "LaunchedServer":
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if any("ready on" in line for line in self.log.read_text().splitlines()):
                self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"launch_server exited with {self.proc.returncode}; its log ({self.log}) ends:\n"
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(1)
        self.__exit__()
        raise TimeoutError(f"launch_server not ready within {READY_TIMEOUT_S:.0f} s; log: {self.log}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.descendants += psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _, alive = psutil.wait_procs([p for p in self.descendants if p.is_running()], timeout=15)
        for process in alive:
            process.kill()


# ---- one scenario -----------------------------------------------------------------------------------------


def run_scenario(server: Server, opts: argparse.Namespace, k: int, router: str, scenario: str) -> dict:
    rate = opts.rate_per_gpu * k
    trace = scenario_trace(scenario, opts.num_adapters, rate, opts.duration, opts.lengths, opts.seed)
    names = adapter_names(adapter_sources(opts.setting, server.adapters), opts.num_adapters)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records, total_time, timeline = asyncio.run(replay(server, names, trace, f"K={k} {router} {scenario}: "))
    shift_s = opts.duration / 2
    popular = [names[i] for i in hot_indices(scenario)]
    result = {
        **summarize(records, total_time),
        "total_time": total_time,
        "throughput": sum(r.ok for r in records) / total_time,
        # Stationary scenarios: the second half, once the plan has settled; the shift: after it, from the moment
        # the new adapter's requests started.
        "routing": routing_hits(records, timeline, since_s=shift_s),
        "merged": merged_timeline(timeline),
        "switches": switches_per_worker(timeline),
        "shift_merged_after_s": merged_after(timeline, popular[-1], shift_s) if scenario == "shift" else None,
        "worker_requests": _per_worker(records),
        "hot_timeline": timeline,
    }
    window = ((server.args or {}).get("popularity") or {}).get("window_s")
    config = {
        "gpus": k, "router": router, "scenario": scenario, "req_rate": rate, "duration": opts.duration,
        "lengths": list(opts.lengths), "num_adapters": opts.num_adapters, "adapters": popular,
        "model_setting": opts.setting, "workers_per_gpu": opts.workers_per_gpu, "seed": opts.seed, "num_requests": len(trace), "popularity_window_s": window,
        "num_workers": server.num_workers, "device_names": server.device_names, "server_args": server.args,
        "launch_args": opts.server_args, "started_utc": started, "client_host": socket.gethostname(),
        "git_commit": git_commit(), "versions": {p: package_version(p) for p in PACKAGES},
    }
    return {"config": config, "result": result}


def _per_worker(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if r.ok and r.worker is not None:
            counts[str(r.worker)] = counts.get(str(r.worker), 0) + 1
    return counts


# ---- the run ----------------------------------------------------------------------------------------------


def output_file(opts: argparse.Namespace, device: str) -> Path:
    if opts.append:
        existing = sorted(opts.out.glob(f"multi_gpu_*_{device}.jsonl"), key=lambda p: p.stat().st_mtime)
        if existing:
            return existing[-1]
    return opts.out / f"multi_gpu_{datetime.date.today().isoformat()}_{device}.jsonl"


def key(config: dict) -> tuple:
    return config["gpus"], config["router"], config["scenario"]


def save(path: Path, record: dict) -> None:
    """Append the record, dropping an earlier line of the same (K, router, scenario)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    lines = [r for r in lines if key(r["config"]) != key(record["config"])] + [record]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    if not opts.dry_run:
        import torch

        needed = -(-max(opts.gpus) // opts.workers_per_gpu)
        if torch.cuda.device_count() < needed:
            raise SystemExit(f"--gpus {max(opts.gpus)} needs {needed} GPUs; this host has "
                             f"{torch.cuda.device_count()} (--dry-run runs CPU workers)")
        device = f"{device_slug(torch.cuda.get_device_name())}-x{torch.cuda.device_count()}"
        if opts.workers_per_gpu > 1:  # its own file: K there counts workers, not GPUs
            device += f"-{opts.workers_per_gpu}-workers-per-gpu"
    else:
        device = "cpu-dry-run"
    path = output_file(opts, device)
    if not opts.append and path.exists():
        path.unlink()
    plan = deployments(opts)
    for i, (k, router) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] K={k} router={router}: starting the app", file=sys.stderr, flush=True)
        log = opts.out / f"{path.stem}_server_K{k}_{router}.log"
        with LaunchedServer(opts, k, router, log) as launched:
            server = probe(launched.url, "fair")
            if server.num_workers != k:
                raise RuntimeError(f"asked for {k} workers, /stats lists {server.num_workers}")
            for scenario in opts.scenarios:
                record = run_scenario(server, opts, k, router, scenario)
                save(path, record)
                r = record["result"]
                print(f"  K={k} {router} {scenario}: {r['completed']}/{r['num_requests']} completed, "
                      f"{r['output_tokens_per_s']:.0f} tok/s, TTFT p90 {r['ttft_p90']}, routing hit rate "
                      f"{r['routing']['hit_rate']}, switches {r['switches']}", file=sys.stderr, flush=True)
    paths = write_report(path)
    print("\n".join(f"wrote {p}" for p in [path, *paths.values()]), file=sys.stderr)


if __name__ == "__main__":
    main()
