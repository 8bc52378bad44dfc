"""The HTTP front: OpenAI-compatible completions and chat (SSE streaming or not), /v1/models, /generate
(NDJSON streaming), vLLM's adapter load/unload, /health and /stats. It counts adapters for the popularity
tracker and hands each request to the worker deployment, whose router picks the worker."""
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter

from deployments.app_args import AppArgs
from deployments.body_limit import BodyLimit
from deployments.call_stream import CallStream
from deployments.http_errors import (
    EXPECTED_ERRORS,
    HTTPError,
    http_error_handler,
    route_error_handler,
    to_http_error,
    unexpected_error_handler,
    validation_error_handler,
)
from deployments.live_metrics import LiveMetrics, render
from deployments.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateBody,
    MAX_USER_CHARS,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
)
from deployments.openai_responses import OpenAIFormat, Result, sse
from deployments.popularity_link import PopularityFeed, PopularityLink
from deployments.readiness import WorkerReadiness
from deployments.worker_call import WorkerCall
from deployments.worker_rerun import complete
from deployments.worker_fleet import WorkerFleet
from deployments.worker_protocol import Completion, Delta, GenerateRequest

ADMIN_TIMEOUT_S = 60.0  # adapter loads read weights from disk on every worker
STATS_TRACKER_WAIT_S = 2.0  # /stats answers without the popularity part rather than wait for a restarting tracker
# serve.ingress copies the class when it is decorated: module globals it uses must be defined above it.

def _generate_body(request: GenerateRequest, result: Result) -> dict:
    body = {
        "id": request.request_id,
        "adapter": request.adapter,
        "text": result.text,
        "token_ids": result.token_ids,
        "finish_reason": result.finish_reason,
        "usage": result.usage(),
        "worker": result.admitted.worker,
        "hot_adapter": result.admitted.hot_adapter,
    }
    if request.sampling.get("logprobs"):
        body["logprobs"] = result.logprobs
    return body


def _generate_delta(request: GenerateRequest, result: Result, delta: Delta) -> dict:
    line = {
        "id": request.request_id,
        "adapter": request.adapter,
        "text": delta.text,
        "token_ids": delta.token_ids,
        "finished": delta.finished,
        "finish_reason": delta.finish_reason,
        "worker": result.admitted.worker,
        "hot_adapter": result.admitted.hot_adapter,
    }
    if request.sampling.get("logprobs"):
        line["logprobs"] = delta.logprobs
    if delta.finished:
        line["usage"] = result.usage()
    return line


app = FastAPI(title="fair_lora")
app.add_middleware(BodyLimit)  # bodies over AppArgs.max_request_bytes get 413 before they are read or parsed
app.add_exception_handler(RequestValidationError, validation_error_handler)
app.add_exception_handler(StarletteHTTPException, route_error_handler)
for expected in EXPECTED_ERRORS:
    app.add_exception_handler(expected, http_error_handler)
app.add_exception_handler(Exception, unexpected_error_handler)  # a bug: answered as 500, and logged by Serve


@serve.ingress(app)
class Ingress:
    def __init__(self, args: AppArgs, workers: DeploymentHandle, tracker: DeploymentHandle) -> None:
        BodyLimit.max_bytes = args.max_request_bytes  # the module-level app's middleware reads it
        self.args = args
        self.workers = workers
        self.base_model = args.base_model_name
        link = PopularityLink(tracker, args.routing.tracker_timeout_s)
        self.link = link
        self.feed = PopularityFeed(link, args.routing.flush_s)
        self.fleet = WorkerFleet(workers, link, ADMIN_TIMEOUT_S)
        self.readiness = WorkerReadiness(workers, args.workers.num_replicas)
        self.responses = Counter("fair_lora_http_responses", "HTTP responses by route and status", ("path", "status"))
        self.live = LiveMetrics()  # this replica's own, for GET /metrics
        self.live.family("fair_lora_http_responses", "counter", "HTTP responses by route and status")
        self._feed_task = asyncio.get_running_loop().create_task(self.feed.run())

    # ---- generation -----------------------------------------------------------------------------------

    def _adapter(self, model: str | None) -> str | None:
        return None if model in (None, self.base_model) else model

    def _request(self, prefix: str, request: Request, adapter: str | None, body) -> GenerateRequest:
        generate = body.to_generate(f"{prefix}-{uuid.uuid4().hex}", adapter)
        client = request.headers.get("x-client-id")
        if client is not None and len(client) > MAX_USER_CHARS:  # it names a client, as `user` does: not a payload
            raise HTTPError(400, f"X-Client-Id must be at most {MAX_USER_CHARS} characters", "X-Client-Id")
        generate.client = client or getattr(body, "user", None)
        generate.arrival = time.time()
        return generate

    async def _start(self, request: GenerateRequest, path: str, shows_tokens: bool) -> WorkerCall:
        try:
            call = await WorkerCall.start(self.workers, request, shows_tokens)
        except Exception as error:  # noqa: BLE001 - mapped here: Serve's own handlers would answer some as 503 text
            raise self._failed(path, error) from None
        self.feed.count(request.adapter)  # admitted requests only: a typo'd adapter name must never turn hot
        return call

    async def _complete(self, request: GenerateRequest, path: str) -> Result:
        """A non-streamed request: one call, one message back from the worker (re-run if its worker fails)."""
        try:
            reply = await complete(self.workers, request)
        except Exception as error:  # noqa: BLE001 - e.g. every try's worker died: 503, not Serve's plain text
            raise self._failed(path, error) from None
        if not isinstance(reply, Completion):
            raise self._failed(path, reply.error)
        self.feed.count(request.adapter)
        if reply.finish_reason == "error":
            raise self._failed(path, HTTPError(500, f"the engine failed on this request: {reply.error}"))
        self._count(path, 200)
        return Result.of(reply)

    def _failed(self, path: str, error: BaseException) -> HTTPError:
        http_error = to_http_error(error)
        self._count(path, http_error.status)
        return http_error

    def _count(self, path: str, status: int) -> None:
        tags = {"path": path, "status": str(status)}
        self.responses.inc(1, tags)
        self.live.inc("fair_lora_http_responses", 1, tags)

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        generate = self._request("cmpl", request, self._adapter(body.model), body)
        return await self._openai(body, generate, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        generate = self._request("chatcmpl", request, self._adapter(body.model), body)
        return await self._openai(body, generate, chat=True)

    async def _openai(self, body: CompletionRequest | ChatCompletionRequest, request: GenerateRequest, chat: bool):
        form = OpenAIFormat(request.request_id, body.model, chat)
        want_logprobs = bool(request.sampling["logprobs"])
        if not body.stream:
            result = await self._complete(request, form.path)
            return JSONResponse(form.response(result, want_logprobs), headers=result.headers)
        call = await self._start(request, form.path, shows_tokens=want_logprobs)
        stream = self._sse(call, form, want_logprobs, body.include_usage)
        return CallStream(call, stream, media_type="text/event-stream", headers=call.admitted.headers)

    async def _sse(
        self, call: WorkerCall, form: OpenAIFormat, want_logprobs: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        try:
            if form.chat:
                yield sse(form.chunk("", None, None, first=True))
            async for delta in call.deltas():
                logprobs = form.logprobs(delta.tokens or [], delta.logprobs or [], want_logprobs)
                if delta.text or delta.finished or logprobs:
                    yield sse(form.chunk(delta.text, delta.finish_reason, logprobs))
            if include_usage:
                yield sse(form.usage_chunk(call.result))
            yield sse("[DONE]")
            self._count(form.path, 200)
        except Exception as error:  # headers are out: the error goes in the stream, as OpenAI's servers do
            yield sse(self._failed(form.path, error).body())
            yield sse("[DONE]")  # the stream's end is never left for the client to guess
        finally:
            call.close()

    @app.post("/generate")
    async def generate(self, body: GenerateBody, request: Request):
        generate = self._request("gen", request, body.adapter or self._adapter(body.model), body)
        if not body.stream:
            result = await self._complete(generate, "/generate")
            return JSONResponse(_generate_body(generate, result), headers=result.headers)
        call = await self._start(generate, "/generate", shows_tokens=True)
        return CallStream(call, self._ndjson(call, generate), media_type="application/x-ndjson", headers=call.admitted.headers)

    async def _ndjson(self, call: WorkerCall, request: GenerateRequest) -> AsyncIterator[str]:
        """One line per delta: its new text and token ids; the last line also has the usage."""
        try:
            async for delta in call.deltas():
                line = _generate_delta(request, call.result, delta)
                yield json.dumps(line) + "\n"
            self._count("/generate", 200)
        except Exception as error:  # noqa: BLE001 - headers are out: the error is the stream's last line
            yield json.dumps(self._failed("/generate", error).body()) + "\n"
        finally:
            call.close()

    # ---- models and adapters ----------------------------------------------------------------------------

    @app.get("/v1/models")
    async def models(self):
        readiness = await self.readiness.check()
        if not readiness.running:  # a broadcast to no worker would wait for one to start
            raise HTTPError(503, f"no worker is up yet: {readiness.describe()}")
        workers = [w for w in await self.fleet.describe() if "adapters" in w]
        if not workers:
            raise HTTPError(503, "no worker answered; retry")
        adapters = sorted(set().union(*(w["adapters"] for w in workers)))
        created = int(time.time())
        base = {
            "id": self.base_model, "object": "model", "created": created, "owned_by": "fair_lora",
            "root": self.base_model, "parent": None, "max_model_len": workers[0]["max_model_len"],
        }
        cards = [base] + [{**base, "id": a, "root": a, "parent": self.base_model} for a in adapters]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")  # :path: an adapter name may hold a slash
    async def model(self, model_id: str):
        card = next((c for c in (await self.models())["data"] if c["id"] == model_id), None)
        if card is None:
            raise HTTPError(404, f"model {model_id!r} does not exist: GET /v1/models lists the base model and adapters")
        return card

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(self, body: LoadLoRAAdapterRequest):
        if body.lora_name == self.base_model:
            raise HTTPError(400, f"lora_name {body.lora_name!r} is the base model's name; pick another", "lora_name")
        count = await self.fleet.load(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully on {count} workers.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(self, body: UnloadLoRAAdapterRequest):
        count = await self.fleet.unload(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully from {count} workers.")

    # ---- health and stats --------------------------------------------------------------------------------

    @app.get("/health")
    async def health(self):
        return PlainTextResponse("")

    @app.get("/ready")
    async def ready(self):
        """200 once every worker is warm, 503 until then; answered at once, from Serve's controller."""
        readiness = await self.readiness.check()
        return PlainTextResponse(readiness.describe() + "\n", status_code=200 if readiness.ready else 503)

    @app.get("/metrics")
    async def metrics(self):
        """Prometheus text: every live worker's metrics and this ingress replica's HTTP responses."""
        own = ({"replica": serve.get_replica_context().replica_tag}, self.live)
        text = render([own, *await self.fleet.live_metrics()])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/stats")
    async def stats(self):
        popularity = await self.link.call("snapshot", wait_s=STATS_TRACKER_WAIT_S)
        return {
            "base_model": self.base_model,
            "args": self.args.model_dump(mode="json"),
            "popularity_tracker": "ok" if popularity is not None else "unavailable",
            "popularity": popularity,
            "workers": await self.fleet.describe(),
        }
