"""Every mistake a client can make gets its status code and a message in OpenAI's error shape, never a 500."""
import asyncio
import json

import httpx
import pytest

from tests.serve_fixtures import offline, stream_completion

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]  # one Ray cluster and one config app for the session
OK = {"model": "adapter-0", "prompt": "hi", "max_tokens": 4}


def _error(response, status: int, *words: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"] and error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "path, body, status, words, param",
    [
        ("/v1/completions", {**OK, "model": "no-such-adapter"}, 404, ["no-such-adapter", "not loaded"], None),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, ["nope"], None),
        ("/generate", {"prompt": "x", "adapter": "nope"}, 404, ["nope"], None),
        ("/v1/completions", {"model": "adapter-0"}, 400, ["Field required"], "prompt"),
        ("/v1/completions", {**OK, "max_tokens": "many"}, 400, ["integer"], "max_tokens"),
        ("/v1/completions", {**OK, "max_tokens": 0}, 400, ["greater than or equal to 1"], "max_tokens"),
        ("/v1/completions", {**OK, "temperature": -1}, 400, ["greater than or equal to 0"], "temperature"),
        ("/v1/completions", {**OK, "top_p": 0}, 400, ["greater than 0"], "top_p"),
        ("/v1/completions", {**OK, "n": 2}, 400, ["n must be 1"], "n"),
        ("/v1/completions", {**OK, "seed": -1}, 400, ["greater than or equal to 0"], "seed"),
        ("/v1/completions", {**OK, "seed": 2**63}, 400, ["less than"], "seed"),
        ("/generate", {"prompt": "x", "seed": 2**64}, 400, ["less than"], "seed"),
        ("/v1/completions", {**OK, "prompt": []}, 400, ["the prompt is empty"], None),
        ("/v1/completions", {**OK, "prompt": [1, 99999]}, 400, ["token ids"], None),
        ("/v1/completions", {**OK, "prompt": ["a", "b"]}, 400, ["one prompt per request"], "prompt"),
        ("/v1/completions", {**OK, "max_tokens": 600}, 400, ["exceeds the context of 512 tokens"], None),
        ("/v1/completions", {**OK, "prompt": "x" * 600, "max_tokens": 1}, 400, ["exceeds the context"], None),
        ("/v1/chat/completions", {"model": "adapter-0", "messages": []}, 400, ["at least 1"], "messages"),
        ("/v1/chat/completions", {"model": "adapter-0", "messages": [{"role": "tool", "content": "x"}]}, 400, ["role"], None),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc"}, 400, ["outside the configured adapter roots"], None),
        ("/v1/load_lora_adapter", {"lora_name": "fair-lora-demo", "lora_path": "/x"}, 400, ["base model"], "lora_name"),
        ("/v1/load_lora_adapter", {"lora_name": "../up", "lora_path": "/x"}, 400, ["invalid"], None),
        ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}, 404, ["never-loaded"], None),
        ("/v1/completions", {**OK, "stream": "yes"}, 400, ["boolean"], "stream"),
        ("/v1/completions", {**OK, "prompt": [True, False]}, 400, ["token ids"], "prompt"),
        ("/v1/completions", {**OK, "logit_bias": {"42": 100}}, 400, ["not supported"], "logit_bias"),
        ("/v1/chat/completions", {"model": "adapter-0", "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
         400, ["not supported"], "tools"),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "a\u0000b"}, 400, ["NUL"], "lora_path"),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/" + "x" * 300}, 400, ["255 bytes"], "lora_path"),
    ],
)
def test_bad_input_gets_its_status_and_message(config_app, path, body, status, words, param):
    with config_app.client() as c:
        _error(c.post(path, json=body), status, *words, param=param)


def test_malformed_json_is_a_400(config_app):
    with config_app.client() as c:
        response = c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    _error(response, 400)


def test_unknown_paths_and_methods_answer_in_openai_shape(config_app):
    with config_app.client() as c:
        _error(c.get("/v1/nothing-here"), 404, "Not Found")
        _error(c.get("/v1/completions"), 405, "Method Not Allowed")
        assert c.get("/v1/completions").json()["error"]["type"] == "MethodNotAllowedError"


def test_a_top_k_past_int64_is_a_400_and_the_app_keeps_serving(config_app):
    with config_app.client() as c:
        _error(c.post("/v1/completions", json={**OK, "top_k": 9223372036854775808}), 400, "top_k", param="top_k")
        replies = [c.post("/v1/completions", json={**OK, "top_k": 5, "temperature": 1.0}) for _ in range(4)]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]


def test_a_body_over_max_request_bytes_is_a_413_however_it_is_sent(config_app):
    big = json.dumps({**OK, "prompt": "x" * (1 << 20)}).encode()
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: counted as it arrives
    headers = {"content-type": "application/json"}
    with config_app.client() as c:
        for response in (c.post("/v1/completions", content=big, headers=headers),
                         c.post("/v1/completions", content=chunks, headers=headers)):
            _error(response, 413, "max_request_bytes")
            assert response.json()["error"]["type"] == "RequestTooLargeError"
        assert c.post("/v1/completions", json=OK).status_code == 200


def test_loading_an_adapter_twice_is_a_400_and_changes_nothing(config_app, offline_engine):
    path = str(offline_engine.model_dir.parent / "adapters" / "adapter-1")
    with config_app.client() as c:
        _error(c.post("/v1/load_lora_adapter", json={"lora_name": "adapter-1", "lora_path": path}), 400, "already loaded")
        assert all("adapter-1" in w["adapters"] for w in config_app.stats()["workers"])
        assert c.post("/v1/completions", json={**OK, "model": "adapter-1"}).status_code == 200


def test_unloading_an_adapter_with_unfinished_requests_is_a_409_and_changes_nothing(config_app, offline_engine):
    path = str(offline_engine.model_dir.parent / "adapters" / "adapter-2")
    bodies = [{"model": "busy-copy", "prompt": f"busy {i}", "max_tokens": 160, "temperature": 0, "ignore_eos": True} for i in range(6)]

    async def run():
        async with httpx.AsyncClient(base_url=config_app.url, timeout=120) as client:
            started = asyncio.Event()
            tasks = [asyncio.create_task(stream_completion(client, b, started)) for b in bodies]
            await asyncio.wait_for(started.wait(), timeout=60)
            refused = await client.post("/v1/unload_lora_adapter", json={"lora_name": "busy-copy"})
            return refused, await asyncio.gather(*tasks)

    with config_app.client() as c:
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "busy-copy", "lora_path": path}).status_code == 200
        refused, results = asyncio.run(run())
        _error(refused, 409, "busy-copy", "unfinished requests")
        assert refused.json()["error"]["type"] == "ConflictError"
        assert all("busy-copy" in w["adapters"] for w in config_app.stats()["workers"]), "a refused unload changed a worker"
        for body, result in zip(bodies, results):
            assert result.status == 200 and result.done and result.error is None, result
            assert result.text == offline(offline_engine, body["prompt"], "adapter-2", 160).text
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "busy-copy"}).status_code == 200
        assert not any("busy-copy" in w["adapters"] for w in config_app.stats()["workers"])


def test_the_server_is_healthy_after_all_of_it(config_app):
    with config_app.client() as c:
        assert c.get("/health").status_code == 200
        assert c.post("/v1/completions", json=OK).status_code == 200
