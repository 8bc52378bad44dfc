"""The serving benchmark's service: a Ray cluster of its own on 127.0.0.1 and the fair_lora app deployed on it,
case after case; and the model and adapters both sides serve."""
import json
import os
import time
from pathlib import Path

import httpx

from benchmarks.common.synthetic_assets import write_random_adapter

APP = "serve_bench"
READY_TIMEOUT_S = 1200.0  # a 7B dummy model's start and warm-up included


def bench_assets(opts) -> tuple[str | None, dict[str, str], str | None]:
    """(model dir or None for the demo, adapters name -> dir, demo dir): the demo's six adapters on the CPU,
    else a dummy-weight model of --model-config's shapes and --num-adapters seeded random adapters."""
    cache = Path(os.environ.get("FAIR_LORA_BENCH_DIR") or Path.home() / ".cache" / "fair_lora" / "serve_bench")
    if opts.cpu:
        from fair_lora.demo import make_demo

        demo = make_demo(cache / "demo")
        return None, {name: str(path) for name, path in demo.adapters.items()}, str(cache / "demo")
    config = json.loads(Path(opts.model_config).read_text())
    model = cache / Path(opts.model_config).stem
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(config))
    adapters = {}
    for i in range(opts.num_adapters):
        directory = cache / "adapters" / f"{Path(opts.model_config).stem}-r{opts.rank}" / f"adapter-{i}"
        if not (directory / "adapter_config.json").is_file():
            write_random_adapter(directory, config, opts.rank, seed_label=f"serve_bench/{i}")
        adapters[f"adapter-{i}"] = str(directory)
    return str(model), adapters, None


class LocalService:
    def __init__(self, port: int, cpus: int) -> None:
        self.port, self.cpus = port, cpus
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> "LocalService":
        import ray
        from ray import serve

        from deployments.serve_env import use_throughput_mode

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        use_throughput_mode()
        ray.init(address="local", num_cpus=self.cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        return self

    def deploy(self, args: dict):
        """Deploy the app with `args`, wait until it answers; returns the function that removes it."""
        from ray import serve

        from deployments import build_app

        serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=10).status_code == 200:
                    return self._undeploy
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the app did not answer within {READY_TIMEOUT_S:.0f} s")

    def direct_url(self) -> str | None:
        """The deployed app's ingress replica's own HTTP server (Serve's direct ingress), if it has one."""
        from deployments.serve_env import direct_ingress_urls

        urls = direct_ingress_urls(APP)
        return urls[0] if urls else None

    def _undeploy(self) -> None:
        from ray import serve

        serve.delete(APP)

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
