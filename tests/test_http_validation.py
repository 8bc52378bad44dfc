"""The HTTP edge refuses hostile or unsupported bodies with a 400 that names the field, and bodies over the size
limit with a 413, before any worker sees them; what clients really send still passes. No Ray: the bodies'
models, the error handlers and the body limit, in a small FastAPI app built like the ingress's."""
import asyncio
import json

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.testclient import TestClient

from deployments.body_limit import BodyLimit
from deployments.http_errors import validation_error_handler
from deployments.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateBody,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
)

COMPLETION = {"model": "adapter-1", "prompt": "Hello", "max_tokens": 4}
CHAT = {"model": "adapter-1", "messages": [{"role": "user", "content": "Hi"}]}
GENERATE = {"prompt": "Hello"}
LOAD = {"lora_name": "mine", "lora_path": "/adapters/mine"}
PATHS = {
    CompletionRequest: ("/v1/completions", COMPLETION),
    ChatCompletionRequest: ("/v1/chat/completions", CHAT),
    GenerateBody: ("/generate", GENERATE),
    LoadLoRAAdapterRequest: ("/v1/load_lora_adapter", LOAD),
    UnloadLoRAAdapterRequest: ("/v1/unload_lora_adapter", {"lora_name": "mine"}),
}
LIMIT = 100_000  # above every body of BAD, which must fail on their own


def edge_app() -> FastAPI:
    """The ingress's edge: its body models, its validation handler and its body limit; each route echoes what
    a worker would get."""
    app = FastAPI()
    app.add_middleware(BodyLimit)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    for model, (path, _) in PATHS.items():

        async def route(body: model):
            return body.to_generate("r", None).__dict__ if hasattr(body, "to_generate") else body.model_dump()

        app.post(path)(route)
    return app


@pytest.fixture(scope="module")
def client():
    default = BodyLimit.max_bytes
    BodyLimit.max_bytes = LIMIT
    with TestClient(edge_app()) as c:
        yield c
    BodyLimit.max_bytes = default


# (body model, what changes in its good body, the field the 400 must name)
BAD = [
    (CompletionRequest, {"top_k": 9223372036854775808}, "top_k"),
    (CompletionRequest, {"top_k": 2**31}, "top_k"),
    (CompletionRequest, {"top_k": -2}, "top_k"),
    (CompletionRequest, {"max_tokens": 2**31}, "max_tokens"),
    (CompletionRequest, {"max_tokens": 4.0}, "max_tokens"),
    (CompletionRequest, {"max_tokens": True}, "max_tokens"),
    (CompletionRequest, {"seed": 2**63}, "seed"),
    (CompletionRequest, {"seed": 1.5}, "seed"),
    (CompletionRequest, {"temperature": 2.5}, "temperature"),
    (CompletionRequest, {"temperature": "0.5"}, "temperature"),
    (CompletionRequest, {"top_p": 1.5}, "top_p"),
    (CompletionRequest, {"top_p": False}, "top_p"),
    (CompletionRequest, {"n": 2}, "n"),
    (CompletionRequest, {"presence_penalty": 0.5}, "presence_penalty"),
    (CompletionRequest, {"frequency_penalty": -1}, "frequency_penalty"),
    (CompletionRequest, {"repetition_penalty": 1.2}, "repetition_penalty"),
    (CompletionRequest, {"stream": "yes"}, "stream"),
    (CompletionRequest, {"stream": 1}, "stream"),
    (CompletionRequest, {"ignore_eos": "true"}, "ignore_eos"),
    (CompletionRequest, {"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (CompletionRequest, {"prompt": [True, False]}, "prompt"),
    (CompletionRequest, {"prompt": [1.0, 2.0]}, "prompt"),
    (CompletionRequest, {"prompt": [1, -1]}, "prompt"),
    (CompletionRequest, {"prompt": [1, 2**31]}, "prompt"),
    (CompletionRequest, {"prompt": ["a", "b"]}, "prompt"),
    (CompletionRequest, {"prompt": 7}, "prompt"),
    (CompletionRequest, {"stop": ["x"] * 17}, "stop"),
    (CompletionRequest, {"stop": "x" * 257}, "stop"),
    (CompletionRequest, {"stop": [""]}, "stop"),
    (CompletionRequest, {"logit_bias": {"42": 100}}, "logit_bias"),
    (CompletionRequest, {"best_of": 3}, "best_of"),
    (CompletionRequest, {"logprobs": 5}, "logprobs"),
    (CompletionRequest, {"logprobs": True}, "logprobs"),
    (CompletionRequest, {"echo": True}, "echo"),
    (CompletionRequest, {"suffix": "end"}, "suffix"),
    (CompletionRequest, {"response_format": {"type": "json_object"}}, "response_format"),
    (CompletionRequest, {"user": 42}, "user"),
    (ChatCompletionRequest, {"max_completion_tokens": 2**31}, "max_completion_tokens"),
    (ChatCompletionRequest, {"max_tokens": 0}, "max_tokens"),
    (ChatCompletionRequest, {"top_logprobs": 3}, "top_logprobs"),
    (ChatCompletionRequest, {"logprobs": 1}, "logprobs"),
    (ChatCompletionRequest, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    (ChatCompletionRequest, {"tool_choice": "required"}, "tool_choice"),
    (ChatCompletionRequest, {"functions": [{"name": "f"}]}, "functions"),
    (ChatCompletionRequest, {"function_call": {"name": "f"}}, "function_call"),
    (ChatCompletionRequest, {"response_format": {"type": "json_schema"}}, "response_format"),
    (ChatCompletionRequest, {"echo": True}, "echo"),
    (ChatCompletionRequest, {"suffix": "x"}, "suffix"),
    (ChatCompletionRequest, {"messages": CHAT["messages"] * 2049}, "messages"),
    (GenerateBody, {"top_k": 2**63}, "top_k"),
    (GenerateBody, {"max_tokens": 2**31}, "max_tokens"),
    (GenerateBody, {"prompt": [True]}, "prompt"),
    (GenerateBody, {"stream": "yes"}, "stream"),
    (GenerateBody, {"logprobs": 1}, "logprobs"),
    (GenerateBody, {"stop": ["s"] * 17}, "stop"),
    (LoadLoRAAdapterRequest, {"lora_path": "/adapters/a\u0000b"}, "lora_path"),
    (LoadLoRAAdapterRequest, {"lora_path": "/adapters/" + "x" * 300}, "lora_path"),
    (LoadLoRAAdapterRequest, {"lora_path": "/a" * 2049}, "lora_path"),
]


@pytest.mark.parametrize("model, change, field", BAD, ids=[f"{m.__name__}-{f}-{i}" for i, (m, _, f) in enumerate(BAD)])
def test_bad_body_is_a_400_naming_its_field(client, model, change, field):
    path, good = PATHS[model]
    response = client.post(path, json={**good, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "BadRequestError" and error["code"] == 400
    assert error["message"].startswith(f"{field}: ") and "Value error" not in error["message"], error["message"]


def test_nan_and_infinity_are_refused(client):
    for word in ("NaN", "Infinity", "-Infinity"):
        body = json.dumps({**COMPLETION, "temperature": 1}).replace('"temperature": 1', f'"temperature": {word}')
        response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", response.text


@pytest.mark.parametrize(
    "model, change, sampling",
    [
        (CompletionRequest, {"top_k": -1, "temperature": 0, "seed": 2**63 - 1}, {"top_k": -1, "temperature": 0}),
        (CompletionRequest, {"top_k": 2**31 - 1, "max_tokens": 2**31 - 1}, {"top_k": 2**31 - 1}),
        (CompletionRequest, {"logprobs": 0, "echo": False, "best_of": 1, "n": 1, "logit_bias": {}}, {"logprobs": True}),
        (CompletionRequest, {"stop": "\n", "presence_penalty": 0, "frequency_penalty": 0.0}, {"stop": ["\n"]}),
        (CompletionRequest, {"prompt": [[1, 2, 3]], "user": "client-7", "metadata": {"any": "thing"}}, {}),
        (CompletionRequest, {"stream": True, "stream_options": {"include_usage": True}}, {}),
        (ChatCompletionRequest, {"logprobs": True, "top_logprobs": 0, "max_completion_tokens": 8}, {"logprobs": True}),
        (ChatCompletionRequest, {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}}, {}),
        (GenerateBody, {"prompt": [1, 2], "top_k": 5, "stop": ["a"] * 16, "logprobs": True}, {"top_k": 5}),
    ],
)
def test_good_body_passes_unchanged(client, model, change, sampling):
    path, good = PATHS[model]
    response = client.post(path, json={**good, **change})
    assert response.status_code == 200, response.text
    assert sampling.items() <= response.json()["sampling"].items()


def test_a_normal_adapter_path_passes(client):
    assert client.post("/v1/load_lora_adapter", json=LOAD).json() == LOAD


def openai_bodies() -> list[tuple[str, dict]]:
    """What the official openai client sends for the calls a user of this app makes."""
    sent = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path.removeprefix("/v1"), json.loads(request.content)))
        return httpx.Response(200, json={"id": "x", "created": 0, "model": "m", "choices": []})

    http = httpx.Client(transport=httpx.MockTransport(record))
    oai = openai.OpenAI(base_url="http://edge/v1", api_key="unused", http_client=http, max_retries=0)
    common = {"model": "adapter-1", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "n": 1, "user": "u1"}
    streamed = {"stream": True, "stream_options": {"include_usage": True}}
    oai.completions.create(prompt="Hello", stop=["\n"], logprobs=0, **common)
    oai.completions.create(prompt=[1, 2, 3], **streamed, **common)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    oai.chat.completions.create(messages=messages, logprobs=True, top_logprobs=0, **common)
    oai.chat.completions.create(model="adapter-1", messages=messages, max_completion_tokens=8, **streamed)
    return sent


def test_what_the_openai_client_sends_passes(client):
    bodies = openai_bodies()
    assert len(bodies) == 4
    for path, body in bodies:
        response = client.post(f"/v1{path}", json=body)
        assert response.status_code == 200, (body, response.text)


# ---- the body-size limit ---------------------------------------------------------------------------------------


def test_declared_body_over_the_limit_is_a_413_before_the_app_reads_it(client):
    body = {**COMPLETION, "prompt": "x" * LIMIT}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("RequestTooLargeError", None, 413)
    assert f"over {LIMIT} bytes" in error["message"] and "max_request_bytes" in error["message"]


def test_chunked_body_over_the_limit_is_a_413_not_fastapis_400(client):
    body = json.dumps({**COMPLETION, "prompt": "x" * LIMIT}).encode()
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    response = client.post("/v1/completions", content=iter(chunks), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "RequestTooLargeError"


def test_body_at_the_limit_passes(client):
    body = json.dumps({**COMPLETION, "prompt": ""}).encode()
    body = body.replace(b'"prompt": ""', b'"prompt": "' + b"x" * (LIMIT - len(body)) + b'"')
    assert len(body) == LIMIT
    response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


class Echo:
    """A bare ASGI app that reads the whole body and answers its length."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        size, more = 0, True
        while more:
            message = await receive()
            size, more = size + len(message.get("body", b"")), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def call(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, int]:
    """Runs one request through the ASGI app: (status, body, chunks the app pulled)."""
    pulled, sent = [], []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        pulled.append(1)
        return messages[len(pulled) - 1]

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, len(pulled)


def test_limit_counts_chunks_without_content_length_and_stops_reading(monkeypatch):
    monkeypatch.setattr(BodyLimit, "max_bytes", 250)
    echo = Echo()
    status, body, pulled = call(BodyLimit(echo), [b"x" * 100] * 10, [])
    assert status == 413 and json.loads(body)["error"]["code"] == 413
    assert pulled == 3, "the app stops reading at the chunk that passes the limit"
    assert call(BodyLimit(echo), [b"x" * 100] * 2 + [b"x" * 50], []) == (200, b"250", 3)


def test_limit_refuses_a_declared_length_without_calling_the_app(monkeypatch):
    monkeypatch.setattr(BodyLimit, "max_bytes", 250)
    echo = Echo()
    status, body, pulled = call(BodyLimit(echo), [b"x" * 251], [(b"content-length", b"251")])
    assert (status, pulled, echo.calls) == (413, 0, 0)
    assert json.loads(body)["error"]["type"] == "RequestTooLargeError"
    assert call(BodyLimit(echo), [b"x" * 250], [(b"content-length", b"250")]) == (200, b"250", 1)


SURROGATES = [
    ("/v1/completions", {**COMPLETION, "prompt": "\ud800"}, "prompt"),
    ("/v1/completions", {**COMPLETION, "prompt": ["a\udc00b"]}, "prompt"),
    ("/v1/completions", {**COMPLETION, "prompt": "\udc00", "stream": True}, "prompt"),
    ("/v1/completions", {**COMPLETION, "stop": "\ud800"}, "stop"),
    ("/v1/completions", {**COMPLETION, "stop": ["ok", "\udc00"]}, "stop"),
    ("/v1/completions", {**COMPLETION, "user": "\ud800"}, "user"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
     "messages.0.content"),
    ("/v1/chat/completions", {**CHAT, "stop": "\udc00", "stream": True}, "stop"),
    ("/generate", {"prompt": "\ud800"}, "prompt"),
    ("/generate", {"prompt": "x", "stop": ["\ud800"], "stream": True}, "stop"),
    ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/a/\ud800"}, "lora_path"),
]


@pytest.mark.parametrize("path, body, field", SURROGATES, ids=[f"{p}-{f}-{i}" for i, (p, _, f) in enumerate(SURROGATES)])
def test_lone_surrogate_is_a_400_saying_the_text_is_not_valid_unicode(client, path, body, field):
    # json.dumps writes a lone surrogate as the \ud800 escape, exactly what a client's JSON encoder sends.
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and "not valid Unicode" in error["message"] and "retry" not in error["message"]


def test_invalid_json_names_no_param_and_says_where_it_broke(client):
    response = client.post("/v1/completions", content='{"model": "a", "prompt": }', headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is None and "not valid JSON" in error["message"] and "character 25" in error["message"]


def test_a_json_body_without_its_content_type_is_told_which_header_it_lacks(client):
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
        response = client.post("/v1/load_lora_adapter", content='{"lora_name": "m"}', headers=headers)
        assert response.status_code == 400, response.text
        assert "content-type: application/json" in response.json()["error"]["message"]
