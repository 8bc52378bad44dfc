"""Fixtures and helpers of the Ray Serve tests: one local Ray cluster per session (started and stopped here),
one app per test module, the offline engine that every served output is compared with, and HTTP helpers.

Test modules load it as a plugin (`pytest_plugins = ["tests.serve_fixtures"]`), so that the session fixtures
exist once however many modules use them.
"""
import asyncio
import json
import os
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.serve_env import use_throughput_mode
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_config_args() -> dict:
    """The `args` of the app in serve_config.yaml, exactly as `serve run` would pass them."""
    return yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]


def demo_config_args() -> dict:
    """serve_config.yaml's settings on the tiny demo model, which the offline engine here reproduces
    (tests/test_serve_readme.py serves the real model)."""
    return {**serve_config_args(), "model": None, "adapter_roots": []}


@dataclass
class Cluster:
    http_port: int
    metrics_port: int
    demo_dir: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    use_throughput_mode()  # the serving tests run the mode the launchers and benchmarks use
    import ray
    from ray import serve

    from fair_lora.demo import make_demo

    demo_dir = tmp_path_factory.mktemp("serve_demo")
    make_demo(demo_dir)  # once, here: the replicas then only read it
    cluster = Cluster(http_port=free_port(), metrics_port=free_port(), demo_dir=str(demo_dir))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,  # replica logs stay in Ray's session log directory, out of pytest's output
        _metrics_export_port=cluster.metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port})
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()


@dataclass
class App:
    name: str
    url: str
    args: dict

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stats(self) -> dict:
        with self.client() as c:
            response = c.get("/stats")
            response.raise_for_status()
            return response.json()


def deploy(cluster: Cluster, name: str, args: dict) -> App:
    from ray import serve

    from deployments import build_app

    args = {**args, "demo_dir": cluster.demo_dir}
    serve.run(build_app(args), name=name, route_prefix=f"/{name}", blocking=False)
    app = App(name, f"{cluster.url}/{name}", args)
    wait_for(lambda: _ready(app), timeout=120, what=f"app {name} to answer with every worker synced")
    return app


def _ready(app: App) -> bool:
    try:
        stats = app.stats()
    except httpx.HTTPError:
        return False
    workers = stats["workers"]
    synced = stats["popularity"] and len(stats["popularity"]["workers"]) == len(workers)
    return len(workers) == app.args["workers"]["num_replicas"] and all("adapters" in w for w in workers) and bool(synced)


def undeploy(app: App) -> None:
    from ray import serve

    serve.delete(app.name)  # its popularity tracker too: a deployment of the app


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def config_app(ray_cluster):
    """The app of serve_config.yaml's settings on the demo model (the demo cache directory is the session's)."""
    app = deploy(ray_cluster, "config_app", demo_config_args())
    yield app
    undeploy(app)


@pytest.fixture(scope="session")
def offline_engine(ray_cluster):
    """The engine the served outputs must equal: same demo, same settings, no Ray."""
    from fair_lora import EngineConfig, LLMEngine

    return LLMEngine(EngineConfig(demo_dir=ray_cluster.demo_dir, auto_hot=False))


def offline(engine, prompt: str | list[int], adapter: str | None, max_tokens: int):
    """Greedy output of one request alone on the offline engine."""
    from fair_lora import SamplingParams

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (cpu_threads: 1)
    try:
        return engine.generate([prompt], [adapter], SamplingParams(max_tokens=max_tokens, ignore_eos=True))[0]
    finally:
        torch.set_num_threads(threads)


def chat_ids(engine, messages: list[dict]) -> list[int]:
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer.encode(text, add_special_tokens=False)


def replica_actor(app_name: str, deployment: str, replica_tag: str = ""):
    """The Ray actor of a replica of `deployment` (the one whose tag is `replica_tag`, if given), to kill it."""
    import ray

    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if name.startswith(f"SERVE_REPLICA::{app_name}#{deployment}#") and name.endswith(replica_tag):
            return ray.get_actor(name, namespace=entry["namespace"])
    raise AssertionError(f"no replica actor for {app_name}/{deployment}/{replica_tag}")


@dataclass
class Reply:
    status: int
    headers: dict
    body: dict


def send_all(url: str, path: str, bodies: list[dict], concurrency: int, timeout: float = 60) -> list[Reply]:
    """POST every body, `concurrency` at a time; replies in the bodies' order."""

    async def run() -> list[Reply]:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

            async def one(body: dict) -> Reply:
                async with gate:
                    response = await client.post(path, json=body)
                    try:
                        content = response.json()
                    except json.JSONDecodeError:  # not ours: e.g. the proxy's own plain-text error
                        content = {"text": response.text}
                    return Reply(response.status_code, dict(response.headers), content)

            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


@dataclass
class StreamResult:
    status: int
    text: str = ""
    finish_reason: str | None = None
    done: bool = False  # saw "data: [DONE]"
    error: dict | None = None  # an error event in the stream, or the error body of a non-200 answer


async def stream_completion(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None) -> StreamResult:
    """Read one SSE completion stream to its end, whatever that end is."""
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            return StreamResult(response.status_code, error=json.loads(await response.aread())["error"])
        result = StreamResult(200)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if started is not None:
                    started.set()
                data = line[len("data: ") :]
                if data == "[DONE]":
                    result.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    result.error = event["error"]
                    continue
                result.text += event["choices"][0]["text"]
                result.finish_reason = event["choices"][0]["finish_reason"] or result.finish_reason
        except httpx.HTTPError as error:  # the connection itself broke: that is not silent either
            result.error = {"message": repr(error), "code": None}
        return result
