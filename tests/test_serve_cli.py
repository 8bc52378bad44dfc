"""`serve run configs/cpu_demo.yaml` (the demo preset), as a user starts it, answers the official openai client like
the offline engine on the same demo model (serve_config.yaml, the real model, is test_serve_readme.py's).

It runs first among the serve tests (file order) and starts its own Ray through the CLI, in a subprocess
that the test stops with SIGTERM (which also stops the cluster it started). The config is the preset with only
its HTTP port changed to a free one: port 8000 may belong to another app on this machine."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fair_lora import EngineConfig, LLMEngine, SamplingParams
from tests.serve_fixtures import free_port

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("cli_demo")
    config = yaml.safe_load((ROOT / "configs" / "cpu_demo.yaml").read_text())
    config["http_options"]["port"] = port = free_port()
    config_path = tmp_path_factory.mktemp("cli_config") / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # RAY_ADDRESS=local: a cluster of its own even when another one on this machine is the "current" one
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local", "FAIR_LORA_DEMO_DIR": str(demo_dir)}
    log = open(tmp_path_factory.mktemp("cli_log") / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.serve.scripts", "run", str(config_path)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"serve run exited with {proc.returncode}; see {log.name}"
            try:
                # /v1/models, not /health: the workers must be up too, not just the ingress
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"serve run did not answer within 180 s; see {log.name}")
        yield demo_dir, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started, and nothing else
            proc.wait()
        log.close()


def test_serve_run_answers_the_openai_client_like_the_offline_engine(served):
    demo_dir, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    names = {m.id for m in client.models.list().data}
    assert {"adapter-0", "adapter-5"} <= names and len(names) == 7, names
    engine = LLMEngine(EngineConfig(demo_dir=str(demo_dir), auto_hot=False))
    offline = engine.generate(["Hello"], ["adapter-2"], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    reply = client.completions.create(model="adapter-2", prompt="Hello", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert reply.choices[0].text == offline.text
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(model="adapter-2", prompt="Hello", max_tokens=8, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
        if chunk.choices
    )
    assert streamed == offline.text
    chat = client.chat.completions.create(model="adapter-4", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
