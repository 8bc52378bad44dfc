"""A soak with chaos: the CPU demo app driven at ~80% of its measured capacity for --minutes with a mixed
workload (whole and streamed requests, streams cut by their clients, hostile bodies, adapter loads and unloads),
while a worker replica, a worker's engine process and the popularity tracker are killed at random times.

    python -m benchmarks.soak --minutes 60 --out benchmarks/results/soak     # the full run
    python -m benchmarks.soak --minutes 0.5 --out /tmp/soak                  # the CI smoke run

It starts a Ray cluster of its own (127.0.0.1, free ports) and stops it at the end. It writes soak.json (every
request's account, the faults, worker memory samples), soak.md (the account and the targets) and soak.png
(latency and worker RSS over time, faults marked), and exits 1 if a request was lost or a 5xx came for a request
that had not streamed a token."""
import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common.http_load import run_load
from benchmarks.soak.chaos import Chaos, sample_memory
from benchmarks.soak.report import account, targets, write
from benchmarks.soak.traffic import adapter_churn, generate, load_request, others, plan

# Its own name: memory is sampled by replica title, and another soak on the machine (the suite's smoke run, say)
# must not count as this one's workers.
APP = f"soak{os.getpid()}"
ARGS = {  # the tiny demo model, with the routing polls of the tests
    "model": None, "max_num_seqs": 16, "max_waiting": 256, "cpu_threads": 1,
    "workers": {"num_replicas": 2, "num_cpus": 0.1}, "ingress": {"num_replicas": 1, "num_cpus": 0.1},
    "routing": {"stats_period_s": 0.2, "flush_s": 0.05, "assignment_poll_s": 0.1},
}
MAX_TOKENS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to offer (0.8)")
    p.add_argument("--capacity-requests", type=int, default=64, help="whole requests of the capacity probe")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(demo_dir: str) -> str:
    """A local Ray cluster and the app; returns the app's URL once both workers answer."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from deployments.serve_env import use_throughput_mode

    use_throughput_mode()
    import ray
    from ray import serve

    from deployments import build_app

    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never another's cluster
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({**ARGS, "demo_dir": demo_dir}), name=APP, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            workers = httpx.get(f"{url}/stats", timeout=10).json()["workers"]
            if len([w for w in workers if "adapters" in w]) == 2:
                return url
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise RuntimeError("the app did not answer within 300 s")


async def capacity(url: str, count: int) -> float:
    """Whole requests/s the app finishes with 16 in flight."""
    started = time.perf_counter()
    records = await run_load(url, [load_request(i, MAX_TOKENS) for i in range(count)], concurrency=16, stream=False,
                             progress=False)
    return sum(r.ok for r in records) / (time.perf_counter() - started)


async def soak(url: str, churn_adapter: str, args: argparse.Namespace) -> dict:
    rate = args.load * await capacity(url, args.capacity_requests)
    duration = args.minutes * 60
    arrivals = plan(duration, rate, args.seed)
    origin = time.perf_counter()
    chaos = Chaos(APP, url)
    pick = lambda *kinds: [(a, k, i) for a, k, i in arrivals if k in kinds]
    results = await asyncio.gather(
        generate(url, [(a, i) for a, _, i in pick("whole")], False, origin, MAX_TOKENS),
        generate(url, [(a, i) for a, _, i in pick("stream")], True, origin, MAX_TOKENS),
        others(url, pick("cut", "hostile"), origin),
        adapter_churn(url, churn_adapter, duration, origin),
        chaos.run(duration, args.seed, origin),
        sample_memory(APP, origin, duration + 5),
        _progress(arrivals, chaos, origin, duration),
    )
    outcomes = [o for part in results[:4] for o in part]
    memory = results[5]
    summary = {"minutes": args.minutes, "rate": rate, "capacity": rate / args.load, "account": account(outcomes),
               "targets": targets(outcomes, memory, duration)}
    write(args.out, summary, outcomes, memory, chaos.events)
    (args.out / "outcomes.json").write_text(json.dumps([dataclasses.asdict(o) for o in outcomes]))
    return summary


async def _progress(arrivals: list, chaos: Chaos, origin: float, duration: float, every_s: float = 60.0) -> None:
    """A line a minute on stderr: how far the run is, what was offered, which faults were injected."""
    while (elapsed := time.perf_counter() - origin) < duration:
        offered = sum(1 for a, _, _ in arrivals if a <= elapsed)
        faults = ", ".join(f"{e['fault']} at {e['at']:.0f} s" for e in chaos.events) or "none yet"
        print(f"[soak {elapsed / 60:5.1f}/{duration / 60:g} min] {offered} requests offered; faults: {faults}",
              file=sys.stderr, flush=True)
        await asyncio.sleep(min(every_s, max(duration - elapsed, 0.1)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fair_lora.demo import make_demo

    demo_dir = tempfile.mkdtemp(prefix="soak_demo_")
    churn_adapter = str(make_demo(demo_dir).adapters["adapter-3"])
    import ray
    from ray import serve

    try:
        summary = asyncio.run(soak(start(demo_dir), churn_adapter, args))
    finally:
        if ray.is_initialized():  # else serve.shutdown would look for a cluster to connect to: never someone else's
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(demo_dir, ignore_errors=True)
    print((args.out / "soak.md").read_text())
    met = summary["targets"]["met"]
    return 0 if met["lost = 0"] and met["5xx only after streamed tokens"] else 1
