"""The app built from serve_config.yaml's args, driven by the official openai client and plain HTTP:
outputs equal the offline engine's (greedy), concurrent requests for different adapters share engine steps,
adapters load and unload on every worker, and a client that goes away frees its KV blocks."""
import asyncio
import re

import httpx
import openai
import pytest

from tests.serve_fixtures import chat_ids, offline, send_all, wait_for

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]  # one Ray cluster and one config app for the session
BASE = "fair-lora-demo"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def app(config_app):
    return config_app


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_names_the_base_model_and_every_adapter(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [BASE] + [f"adapter-{i}" for i in range(6)]


@pytest.mark.parametrize("model", ["adapter-0", "adapter-3", BASE])
def test_completion_equals_offline_engine(client, offline_engine, model):
    prompt = "The quick brown fox"
    got = client.completions.create(model=model, prompt=prompt, max_tokens=12, **GREEDY)
    adapter = None if model == BASE else model
    want = offline(offline_engine, prompt, adapter, 12)
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == len(want.prompt_token_ids) and got.usage.completion_tokens == 12


def test_completion_from_token_ids_equals_offline_engine(client, offline_engine):
    ids = offline_engine.tokenizer.encode("token ids in")
    got = client.completions.create(model="adapter-1", prompt=ids, max_tokens=8, **GREEDY)
    assert got.choices[0].text == offline(offline_engine, ids, "adapter-1", 8).text


def test_chat_equals_offline_engine_on_the_chat_template(client, offline_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    got = client.chat.completions.create(model="adapter-2", messages=messages, max_tokens=10, **GREEDY)
    want = offline(offline_engine, chat_ids(offline_engine, messages), "adapter-2", 10)
    assert got.choices[0].message.content == want.text
    assert got.choices[0].message.role == "assistant"


def test_streamed_completion_concatenates_to_the_offline_text(client, offline_engine):
    stream = client.completions.create(
        model="adapter-4", prompt="stream me", max_tokens=16, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == offline(offline_engine, "stream me", "adapter-4", 16).text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16


def test_streamed_chat_concatenates_to_the_offline_text(client, offline_engine):
    messages = [{"role": "user", "content": "stream a chat"}]
    stream = client.chat.completions.create(model=BASE, messages=messages, max_tokens=16, stream=True, **GREEDY)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == offline(offline_engine, chat_ids(offline_engine, messages), None, 16).text


def test_generate_returns_the_offline_token_ids(app, offline_engine):
    with app.client() as c:
        request = {"prompt": "plain api", "adapter": "adapter-5", "max_tokens": 10, "ignore_eos": True}
        body = c.post("/generate", json=request).json()
    want = offline(offline_engine, "plain api", "adapter-5", 10)
    assert body["token_ids"] == want.token_ids and body["text"] == want.text


def test_concurrent_requests_for_different_adapters_share_a_step(app, offline_engine):
    adapters = [None, "adapter-0", "adapter-1", "adapter-2", "adapter-3", "adapter-4", "adapter-5", "adapter-0"]

    async def run():
        async with httpx.AsyncClient(base_url=app.url, timeout=60) as c:
            bodies = [
                {"prompt": f"batch {i}", "adapter": a, "max_tokens": 24, "ignore_eos": True} for i, a in enumerate(adapters)
            ]
            return await asyncio.gather(*(c.post("/generate", json=b) for b in bodies))

    def shared_steps() -> tuple[int, int]:  # counted since each worker started: compare before and after
        workers = app.stats()["workers"]
        return sum(w["batched_steps"] for w in workers), sum(w["multi_adapter_steps"] for w in workers)

    batched_before, mixed_before = shared_steps()
    responses = asyncio.run(run())
    for i, (adapter, response) in enumerate(zip(adapters, responses)):
        assert response.json()["token_ids"] == offline(offline_engine, f"batch {i}", adapter, 24).token_ids
    batched_after, mixed_after = shared_steps()
    assert batched_after > batched_before, "no step of this burst ran more than one request"
    assert mixed_after > mixed_before, "no step of this burst served more than one adapter"


METRICS = [
    "fair_lora_requests", "fair_lora_prompt_tokens", "fair_lora_generation_tokens", "fair_lora_ttft_seconds",
    "fair_lora_request_latency_seconds", "fair_lora_hot_adapter", "fair_lora_batched_tokens",
    "fair_lora_correction_token_share", "fair_lora_batch_size", "fair_lora_queue_waiting", "fair_lora_queue_running",
    "fair_lora_http_responses",
]


def test_metrics_are_exported_by_adapter_and_worker(app, ray_cluster):
    def exported() -> set[str]:
        text = ray_cluster.metrics()
        pattern = r'^ray_{}(_total|_bucket|_sum|_count)?{{[^}}]*application="{}"'
        return {name for name in METRICS if re.search(pattern.format(name, app.name), text, re.M)}

    bodies = [{"model": "adapter-0", "prompt": "metered", "max_tokens": 4} for _ in range(4)]
    assert all(r.status == 200 for r in send_all(app.url, "/v1/completions", bodies, concurrency=4))
    wait_for(lambda: exported() == set(METRICS), timeout=30, what=f"metrics {METRICS}: {set(METRICS) - exported()} missing")
    text = ray_cluster.metrics()
    assert re.search(rf'ray_fair_lora_generation_tokens(_total)?{{[^}}]*adapter="adapter-0"[^}}]*worker="[01]"', text)


def test_the_ingress_serves_the_live_workers_metrics(app):
    bodies = [{"model": "adapter-0", "prompt": "metered", "max_tokens": 4} for _ in range(4)]
    assert all(r.status == 200 for r in send_all(app.url, "/v1/completions", bodies, concurrency=4))
    with app.client() as c:
        response = c.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    missing = [name for name in METRICS if not re.search(rf"^{name}(_total|_bucket|_sum|_count)?[{{ ]", text, re.M)]
    assert not missing, f"not in /metrics: {missing}"
    replicas = {w["replica"] for w in app.stats()["workers"]}
    assert {m for m in re.findall(r'fair_lora_batched_tokens_total{[^}]*replica="([^"]+)"', text)} == replicas
    generated = re.findall(r'^fair_lora_generation_tokens_total{adapter="adapter-0",replica="[^"]+",worker="[01]"} (\S+)',
                           text, re.M)
    assert sum(float(v) for v in generated) >= 16


def test_load_and_unload_reach_every_worker(app, client, offline_engine):
    path = str(offline_engine.model_dir.parent / "adapters" / "adapter-0")
    with app.client() as c:
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "copy-of-0", "lora_path": path}).status_code == 200
        assert all("copy-of-0" in w["adapters"] for w in app.stats()["workers"])
        assert "copy-of-0" in [m.id for m in client.models.list().data]
        got = client.completions.create(model="copy-of-0", prompt="same weights", max_tokens=8, **GREEDY)
        assert got.choices[0].text == offline(offline_engine, "same weights", "adapter-0", 8).text
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "copy-of-0"}).status_code == 200
        assert not any("copy-of-0" in w["adapters"] for w in app.stats()["workers"])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="copy-of-0", prompt="gone", max_tokens=4)


def test_requests_arriving_during_an_unload_are_refused_cleanly_and_a_cancelled_unload_changes_nothing(
    app, offline_engine
):
    """An unload's first phase stops every worker admitting the adapter: a request routed then gets a 404, never a
    failure mid-way; if the unload is called off (a worker was busy), requests are served again."""
    from ray import serve

    path = str(offline_engine.model_dir.parent / "adapters" / "adapter-1")
    workers = serve.get_deployment_handle("LoRAWorker", app_name=app.name)
    body = {"model": "copy-of-1", "prompt": "during an unload", "max_tokens": 4}
    with app.client() as c:
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "copy-of-1", "lora_path": path}).status_code == 200
        try:
            assert workers.broadcast("begin_unload", "copy-of-1").results(timeout_s=30) == [None, None]
            refused = c.post("/v1/completions", json=body)
            assert refused.status_code == 404 and "being unloaded" in refused.json()["error"]["message"]
            workers.broadcast("cancel_unload", "copy-of-1").results(timeout_s=30)
            assert c.post("/v1/completions", json=body).status_code == 200
        finally:
            assert c.post("/v1/unload_lora_adapter", json={"lora_name": "copy-of-1"}).status_code == 200


def test_client_disconnect_aborts_the_request_and_frees_its_blocks(app):
    def aborted() -> int:  # requests the engine dropped unfinished (engine.abort returned True)
        return sum(w["aborted"] for w in app.stats()["workers"])

    before = aborted()
    body = {"model": "adapter-1", "prompt": "a long one", "max_tokens": 480, "stream": True, "ignore_eos": True}
    with app.client() as c, c.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        next(response.iter_lines())
    # Only an abort counts: a request that ran to its end is not aborted, whatever the machine's load.
    wait_for(lambda: aborted() == before + 1, timeout=20, what="the engine to abort the disconnected request")
    wait_for(
        lambda: all(w["running"] == 0 and w["free_blocks"] == w["num_blocks"] for w in app.stats()["workers"]),
        timeout=15, what="the disconnected request's blocks to be freed",
    )
