"""The presets of configs/ served for real on this machine: each starts with random weights of its
model's shapes (load_format dummy) and synthetic adapters under the preset's adapter names, on one worker; HTTP
requests over every adapter; skewed traffic until the plan merges an adapter while requests stream; the worker
killed mid-stream and Serve's replacement serving again. Prints a table; exits 1 if a check failed.

    python -m benchmarks.serving.gpu_serve_check [--presets configs/gpu_llama2_7b.yaml,configs/cpu_demo.yaml]
"""
import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.common.http_load import LoadRequest, run_load, summarize
from benchmarks.common.report import REPO
from benchmarks.common.synthetic_assets import write_random_adapter
from benchmarks.common.trace import prompt_token_ids
from benchmarks.serving.service import LocalService

CACHE = Path.home() / ".cache" / "fair_lora" / "gpu_serve_check"
MODEL_CONFIGS = {"Llama-2-7b-hf": "llama-2-7b.json"}  # a preset's model directory name -> the shapes to fake


def preset_args(path: Path) -> dict:
    """The preset's args, on one worker, its model and adapters replaced by random ones of the same names."""
    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    args["workers"] = {**args.get("workers", {}), "num_replicas": 1}
    if args.get("model"):
        config = json.loads((REPO / "configs" / MODEL_CONFIGS[Path(args["model"]).name]).read_text())
        model = CACHE / Path(args["model"]).name
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text(json.dumps(config))
        adapters = {}
        for name in args.get("adapters", {}):
            directory = CACHE / "adapters" / name
            if not (directory / "adapter_config.json").is_file():
                write_random_adapter(directory, config, 16, seed_label=f"gpu_serve_check/{name}")
            adapters[name] = str(directory)
        args.update(model=str(model), load_format="dummy", adapters=adapters, adapter_roots=[str(CACHE / "adapters")])
    return args


def stats(url: str) -> dict:
    return httpx.get(f"{url}/stats", timeout=30).json()


def load(url: str, names: list[str | None], count: int, max_tokens: int, concurrency: int = 32) -> dict:
    requests = [LoadRequest(prompt_token_ids(64), names[i % len(names)], max_tokens) for i in range(count)]
    start = time.perf_counter()
    records = asyncio.run(run_load(url, requests, concurrency=concurrency, stream=True, progress=False))
    return summarize(records, time.perf_counter() - start)


def wait(predicate, timeout_s: float) -> float | None:
    """Seconds until predicate() held, or None if it never did."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if predicate():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


def kill_worker(app: str) -> str:
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"SERVE_REPLICA::{app}#LoRAWorker#"):
            ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)
            return entry["name"]
    raise RuntimeError("no worker replica to kill")


def check(service: LocalService, preset: Path) -> dict:
    args = preset_args(preset)
    row: dict = {"preset": preset.name}
    start = time.monotonic()
    undeploy = service.deploy(args)
    url = service.url
    try:
        row["ready_s"] = time.monotonic() - start
        worker = stats(url)["workers"][0]
        row.update(memory_plan=worker["memory_plan"], warmup_s=worker["warmup_seconds"], device=worker["device_name"])
        adapters = sorted(worker["adapters"])
        row["every_adapter"] = load(url, [None, *adapters], 4 * (len(adapters) + 1), 16)
        hot = adapters[0]
        minimum = args.get("popularity", {}).get("min_requests", 10)
        skewed = load(url, [hot, hot, hot, None], 2 * minimum + 40, 32)
        row["merged_s"] = wait(lambda: stats(url)["workers"][0]["hot_adapter"] == hot, 30)
        row["skewed"] = skewed
        row["hot_served"] = load(url, [hot], 32, 16)
        killed_at = time.monotonic()

        async def during_kill():
            requests = [LoadRequest(prompt_token_ids(64), hot, 256) for _ in range(16)]
            task = asyncio.create_task(run_load(url, requests, concurrency=16, stream=True, progress=False))
            await asyncio.sleep(2.0)
            await asyncio.to_thread(kill_worker, "serve_bench")
            return await task

        cut = asyncio.run(during_kill())
        row["killed_requests"] = {"ok": sum(r.ok for r in cut), "errors": sorted({str(r.status) for r in cut if not r.ok})}
        row["recovered_s"] = wait(lambda: httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
                                  and stats(url)["workers"][0].get("adapters"), 900)
        row["after_kill"] = load(url, [None, *adapters], 2 * (len(adapters) + 1), 16) if row["recovered_s"] else None
        row["recovered_s"] = time.monotonic() - killed_at if row["recovered_s"] is not None else None
    finally:
        undeploy()
    return row


def verdict(row: dict) -> list[str]:
    failed = []
    for key in ("every_adapter", "skewed", "hot_served", "after_kill"):
        run = row.get(key)
        if not run or run["failed"]:
            failed.append(f"{key}: {run and run['error_samples']}")
    if row.get("merged_s") is None:
        failed.append("the skewed adapter was never merged")
    if row["killed_requests"]["errors"] and not set(row["killed_requests"]["errors"]) <= {"200", "503"}:
        failed.append(f"killed worker's requests ended with {row['killed_requests']['errors']}")
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="configs/gpu_llama2_7b.yaml,configs/cpu_demo.yaml")
    p.add_argument("--port", type=int, default=8000)
    opts = p.parse_args(argv)
    rows, failures = [], []
    with LocalService(opts.port, cpus=8) as service:
        for preset in opts.presets.split(","):
            row = check(service, REPO / preset)
            rows.append(row)
            failures += [f"{row['preset']}: {f}" for f in verdict(row)]
            print(json.dumps(row, default=str), flush=True)
    print("| preset | device | ready s | warm-up s | merged after s | killed: ok / errors | recovered s | memory plan |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        killed = r["killed_requests"]
        recovered = f"{r['recovered_s']:.0f}" if r["recovered_s"] is not None else "never"
        merged = f"{r['merged_s']:.1f}" if r["merged_s"] is not None else "never"
        print(f"| {r['preset']} | {r['device']} | {r['ready_s']:.0f} | {r['warmup_s']:.1f} | {merged} "
              f"| {killed['ok']} / {killed['errors']} | {recovered} | {r['memory_plan']} |")
    print("FAILED:\n" + "\n".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
