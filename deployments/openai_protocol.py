"""HTTP request bodies (OpenAI's and vLLM's names), validated at the edge and turned into GenerateRequests."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.http_errors import HTTPError
from deployments.worker_protocol import GenerateRequest

Prompt = str | list[int] | list[str] | list[list[int]]


class _Body(BaseModel):
    # Clients send fields we do not use (user, metadata, ...): ignore those, but refuse values we cannot honor.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = Field(None, ge=0, lt=2**63)  # the engine's range: out of it is a 400 here, at the edge
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _supported(self) -> "_Sampling":
        if self.n != 1:
            raise ValueError("n must be 1: send one request per sample")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported; leave them at 0")
        return self

    def sampling(self, logprobs: bool) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k or 0,
            "seed": self.seed,
            "stop": stop,
            "ignore_eos": self.ignore_eos,
            "logprobs": logprobs,
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=0)  # 0: the chosen token's log-probability; no top-k alternatives
    echo: Literal[False] = False
    suffix: None = None

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                message = "prompt: one prompt per request is supported; send a list as separate requests"
                raise HTTPError(400, message, "prompt")
            prompt = prompt[0]
        return GenerateRequest(
            request_id, adapter, prompt=prompt, max_tokens=self.max_tokens,
            sampling=self.sampling(logprobs=self.logprobs is not None),
        )


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=0)  # only the chosen token's log-probability is computed

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        return GenerateRequest(
            request_id, adapter, messages=messages, max_tokens=self.max_completion_tokens or self.max_tokens,
            sampling=self.sampling(logprobs=self.logprobs),
        )


class GenerateBody(_Body):
    """The plain /generate API: greedy by default, an optional adapter (or `model`), NDJSON when streaming."""

    prompt: str | list[int]
    adapter: str | None = None
    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    seed: int | None = Field(None, ge=0, lt=2**63)  # the engine's range: out of it is a 400 here, at the edge
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    stream: bool = False

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        sampling = self.model_dump(include={"temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "logprobs"})
        return GenerateRequest(request_id, adapter, prompt=self.prompt, max_tokens=self.max_tokens, sampling=sampling)


class LoadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
