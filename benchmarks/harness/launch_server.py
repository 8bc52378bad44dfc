"""Serve one of S-LoRA's model settings through the Ray Serve app, in the foreground, the way S-LoRA's
benchmarks/harness/launch_server.py starts its server (run it from benchmarks/, or as `python -m benchmarks.harness.launch_server`):

    python launch_server.py --num-adapter 100 --num-token 10000 --model-setting S1 --dummy               # S-LoRA
    python launch_server.py --fair_strategy --num-adapter 100 --num-token 10000 --model-setting S1 --dummy
    python launch_server.py --fair_strategy --num-adapter 8 --num-token 4000 --model-setting Demo         # CPU
    python launch_server.py --fair_strategy --num-adapter 12 --num-token 16384 --max-model-len 2048 --model-setting Real
                                                  # CPU or GPU: SmolLM2-135M-Instruct and its shipped adapters

It starts a local Ray cluster of its own, runs the app of serve_config.yaml (`deployments:build_app`) with args
built from the flags on http://127.0.0.1:PORT, prints one line once the service answers, and serves until Ctrl-C
or SIGTERM; then it shuts Serve and Ray down (the popularity actor included) and leaves no Ray process behind.
"""
import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common.synthetic_assets import SETTINGS, Assets, default_cache_dir, plan_assets
from deployments.serve_env import DIRECT_PORTS, use_throughput_mode
from fair_lora.real_model import SMOLLM2

APP_NAME = "fair_lora"
READY_TIMEOUT_S = 1800.0  # a GPU worker loads the model and every adapter before it answers
# Past serve.shutdown's own 30 s wait on its controller, so that it has returned before ray.shutdown: a thread
# still inside Ray when the core worker stops makes Ray end the whole process with status 1.
SERVE_SHUTDOWN_TIMEOUT_S = 45.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-setting", default="S1", choices=SETTINGS)
    p.add_argument("--num-adapter", type=int, default=30, help="adapters to serve, named <source>-<i> (30)")
    p.add_argument("--num-token", type=int, default=None,
                   help="KV-cache capacity in tokens, per worker (default: the engine sizes it)")
    p.add_argument("--fair_strategy", "--fair-strategy", action="store_true",
                   help="mode fair: merge the popular adapter (without it: mode slora, never merge)")
    p.add_argument("--dummy", action="store_true", help="random base weights from the model's config.json")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float16 on cuda (as S-LoRA), float32 on cpu")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-replicas", type=int, default=1, help="LoRA workers (one GPU each on cuda)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0,
                   help="on cuda: 0.5 puts two workers on a GPU (then --num-token sizes each one's KV cache)")
    p.add_argument("--model", default=None, help="a Hugging Face model directory (Real: default "
                   f"{SMOLLM2}, converted once into the cache; optional for S1/S2/S4)")
    p.add_argument("--adapter-dir", nargs="+", default=None,
                   help=f"PEFT adapter directories (Real), cycled (default with {SMOLLM2}: its shipped adapters)")
    p.add_argument("--served-model-name", default=None,
                   help="the base model's name in the API (default: the model directory's name)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="longest prompt + output per request (default: the model's context; on the CPU the KV "
                   "cache is sized from it, so set it for a real model)")
    p.add_argument("--scheduler", choices=("fcfs", "vtc"), default="fcfs")
    p.add_argument("--router", choices=("hot_adapter", "default"), default="hot_adapter",
                   help="default: Ray Serve's own router, blind to adapters (a baseline)")
    p.add_argument("--popularity-window-s", type=float, default=None,
                   help="the popularity window (default: the app's, 30 s)")
    p.add_argument("--client-weights", "--fair-weights", nargs="+", default=None,
                   help="VTC weights: w1 w2 ... for the first adapters in order, or NAME=W "
                   "(--fair-weights: S-LoRA's spelling)")
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-adapter-slots", type=int, default=None)
    p.add_argument("--merge-trial-steps", type=int, default=None,
                   help="decode steps a worker measures before it keeps an assigned merge; 0: keep every merge "
                   "(default: the app's, 32)")
    p.add_argument("--max-waiting", type=int, default=4096,
                   help="queued requests per worker before 429; large, as S-LoRA never rejects (4096)")
    p.add_argument("--cpu-threads", type=int, default=None, help="torch threads per worker")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the Ray cluster (default: all)")
    p.add_argument("--cache-dir", default=None, help=f"synthetic model and adapters (default {default_cache_dir()})")
    p.add_argument("--demo-dir", default=None, help="the demo's cache (default $FAIR_LORA_DEMO_DIR or ~/.cache)")
    opts = p.parse_args(argv)
    if opts.device is None:
        import torch

        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    opts.dtype = opts.dtype or ("float16" if opts.device == "cuda" else "float32")
    return opts


def build_app_args(opts: argparse.Namespace, assets: Assets) -> dict:
    """The app's args (as serve_config.yaml's `args:` block) for these flags and assets; validated by the app."""
    if opts.model_setting in ("S1", "S2", "S4") and not (opts.dummy or opts.model):
        raise SystemExit(f"--model-setting {opts.model_setting} has no weights: pass --dummy (random weights "
                         "of its shapes) or --model DIR")
    cuda = opts.device == "cuda"
    in_flight = 1024 + opts.num_replicas * opts.max_waiting
    args = {
        "model": assets.model,
        "load_format": "dummy" if opts.dummy else "safetensors",
        "adapters": assets.adapters,
        "device": opts.device,
        "dtype": opts.dtype,
        "mode": "fair" if opts.fair_strategy else "slora",
        "max_lora_rank": assets.max_rank,
        "max_waiting": opts.max_waiting,
        "scheduling_policy": opts.scheduler,
        "client_weights": client_weights(opts.client_weights or [], list(assets.adapters)),
        "workers": {"num_replicas": opts.num_replicas, "num_cpus": 0.1, "num_gpus": opts.gpus_per_worker if cuda else 0},
        "routing": {"router": opts.router},
        # The ingress holds every request the workers may queue (plus the default 1024): past its limit the proxy
        # answers 503, where S-LoRA's server would queue.
        "ingress": {"num_replicas": 1, "num_cpus": 0.1, "max_ongoing_requests": in_flight,
                    "max_queued_requests": in_flight},
    }
    optional = {
        "num_kv_tokens": opts.num_token, "max_num_seqs": opts.max_num_seqs,
        "max_num_batched_tokens": opts.max_num_batched_tokens, "max_adapter_slots": opts.max_adapter_slots,
        "merge_trial_steps": opts.merge_trial_steps,
        "cpu_threads": opts.cpu_threads, "demo_dir": assets.demo_dir, "max_model_len": opts.max_model_len,
        "served_model_name": opts.served_model_name,
        "popularity": None if opts.popularity_window_s is None else {"window_s": opts.popularity_window_s},
    }
    return {**args, **{k: v for k, v in optional.items() if v is not None}}


def client_weights(values: list[str], adapters: list[str]) -> dict[str, float]:
    """S-LoRA's positional `--fair-weights w1 w2 ...` (the i-th weight for the i-th adapter), or NAME=W pairs."""
    weights = {}
    for i, value in enumerate(values):
        name, _, weight = value.rpartition("=")
        if not name:
            if i >= len(adapters):
                raise SystemExit(f"--client-weights: {len(values)} weights for {len(adapters)} adapters")
            name = adapters[i]
        weights[name] = float(weight)
    return weights


def wait_ready(url: str, timeout_s: float) -> dict:
    """GET /v1/models until it answers 200 (every worker up), then its body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v1/models", timeout=10)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/v1/models did not answer within {timeout_s:.0f} s")


def own_direct_ingress_urls(app: str, host: str = "127.0.0.1") -> list[str]:
    """The URLs on which the ingress replicas of `app` in the cluster we started serve HTTP themselves (direct
    ingress): their processes are the ones Ray's actor table names, not any process of the host with a like name."""
    from ray._private.state import actors  # no public API gives a replica's pid

    prefix = f"SERVE_REPLICA::{app}#Ingress#"
    pids = {a["Pid"] for a in actors(actor_state_name="ALIVE").values() if a["Name"].startswith(prefix)}
    lo, hi = (int(os.environ.get(f"RAY_SERVE_DIRECT_INGRESS_{k}_HTTP_PORT", d)) for k, d in zip(("MIN", "MAX"),
                                                                                               DIRECT_PORTS))
    ports = set()
    for pid in pids:
        try:
            listening = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:  # a replica that ended since the table was read
            continue
        ports |= {c.laddr.port for c in listening if c.status == psutil.CONN_LISTEN and lo <= c.laddr.port <= hi}
    return [f"http://{host}:{port}" for port in sorted(ports)]


def default_real_assets(opts: argparse.Namespace) -> None:
    """--model-setting Real with no --model: SmolLM2 (converted on first use) and its shipped adapters."""
    if opts.model_setting == "Real" and opts.model is None:
        from fair_lora.real_model import smollm2_adapters, smollm2_model_dir

        smollm2_model_dir()  # converted here, once, rather than by every worker at its start
        opts.model = SMOLLM2
        opts.adapter_dir = opts.adapter_dir or [str(p) for p in smollm2_adapters().values()]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_forever(opts: argparse.Namespace, app_args: dict, num_adapters: int) -> None:
    import ray
    from ray import serve

    from deployments import build_app

    url = f"http://127.0.0.1:{opts.port}"
    # address="local": always a cluster of our own, never one that RAY_ADDRESS or an earlier `ray start` names.
    use_throughput_mode()
    ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    # After ray.init, which installs its own SIGTERM handler: SIGTERM stops us the way Ctrl-C does, and so does
    # SIGINT even where the shell started us in the background with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    ours = RayProcesses()
    ours.start()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        models = wait_ready(url, READY_TIMEOUT_S)
        extra = len(models["data"]) - 1 - num_adapters  # the demo's own adapters, served beside the copies
        session = ray._private.worker._global_node.get_session_dir_path()  # no public API names it
        direct = own_direct_ingress_urls(APP_NAME)
        print(f"fair_lora server ready on {url}: mode {app_args['mode']}, setting {opts.model_setting}, "
              f"{num_adapters} adapters" + (f" (+{extra} of the model)" if extra else "") +
              f", scheduler {opts.scheduler}, router {opts.router}, {opts.num_replicas} worker(s) on {opts.device}; "
              f"Ray logs in {session}/logs", flush=True)
        if direct:
            print(f"fair_lora server: the ingress also serves on {', '.join(direct)} itself (faster: no proxy hop)",
                  flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("fair_lora server: shutting down", file=sys.stderr, flush=True)
        ours.snapshot()
        shutdown()
        ours.reap()


class RayProcesses:
    """The processes this launcher started (Ray's own and its workers), remembered from ray.init on.

    Ray's actors run in their own sessions, children of the raylet: when a SIGTERM sent to our whole process
    group (e.g. by `timeout`) kills the raylet first, they are orphaned and outlive ray.shutdown(). Those that
    are still alive after it are the ones remembered here, and only those are killed."""

    INTERVAL_S = 2.0

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.known: dict[int, psutil.Process] = {}
        self.lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            try:
                self.snapshot()
            except psutil.Error:  # a process that ended while we looked: the next look is complete
                pass
            time.sleep(self.INTERVAL_S)

    def snapshot(self) -> None:
        with self.lock:
            for child in self.me.children(recursive=True):
                self.known.setdefault(child.pid, child)

    def reap(self, grace_s: float = 10.0) -> None:
        with self.lock:
            alive = [p for p in self.known.values() if p.is_running()]  # is_running also checks the start time
        _, alive = psutil.wait_procs(alive, timeout=grace_s)
        for process in alive:
            print(f"fair_lora server: killing leftover Ray process {process.pid}", file=sys.stderr, flush=True)
            process.kill()
        psutil.wait_procs(alive, timeout=grace_s)


def shutdown() -> None:
    import ray
    from ray import serve

    # serve.shutdown waits on the raylet forever once it is dead: past the replicas' graceful shutdown, give up
    # on it (ray.shutdown and the reaping still stop everything).
    thread = threading.Thread(target=serve.shutdown, daemon=True)
    thread.start()
    thread.join(SERVE_SHUTDOWN_TIMEOUT_S)
    ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the API and Ray listen on 127.0.0.1 only
    opts = parse_args(argv)
    default_real_assets(opts)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else None
    assets = plan_assets(opts.model_setting, opts.num_adapter, cache_dir, opts.model, opts.adapter_dir, opts.demo_dir)
    app_args = build_app_args(opts, assets)
    assets.write()
    serve_forever(opts, app_args, len(assets.adapters))


if __name__ == "__main__":
    main()
