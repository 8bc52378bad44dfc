"""HTTP request bodies (OpenAI's and vLLM's names), validated at the edge and turned into GenerateRequests.

Every number is bounded and every bool and token id strictly typed here, so a hostile value is a 400 naming its
field before it reaches a worker. A field we cannot honour is refused unless its value asks for nothing, as vLLM
does: ignoring it would answer a question the client did not ask. Fields we do not know (user, metadata, ...)
are ignored."""
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from deployments.worker_protocol import GenerateRequest
from fair_lora.sampling_params import MAX_INT, MAX_SEED, MAX_STOP_CHARS, MAX_STOP_STRINGS

MAX_MESSAGES = 2048  # bounds the chat template's work; far beyond what one request of a real conversation sends
MAX_PROMPT_IDS = 1 << 20  # beyond the context of every model the engine loads; it refuses what exceeds its own
MAX_PATH_CHARS, MAX_PATH_PART_BYTES = 4096, 255  # Linux's PATH_MAX and NAME_MAX
MAX_USER_CHARS = 256  # `user` names a client (for fair scheduling): an id, not a payload
NOT_UNICODE = "is not valid Unicode: it holds a lone UTF-16 surrogate (e.g. \\ud800); send UTF-8 text"


def _one_error(kind: Any, rule: str) -> Any:
    """`kind` (a union), reported as one error on its field when nothing matched, instead of one per member."""

    def check(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"must be {rule}") from None

    return Annotated[kind, WrapValidator(check)]


def _unsupported(*harmless: object, advice: str) -> Any:
    """A field we cannot honour: None or one of `harmless` (values that ask for nothing, of the same JSON type)
    passes, anything else is a 400 that says what to do."""

    def check(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        if value is None or any(type(value) is type(h) and value == h for h in harmless):
            return value
        raise ValueError(f"not supported: {advice}")

    return Annotated[object, WrapValidator(check)]


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_INT)]], Field(max_length=MAX_PROMPT_IDS)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
STOP_LIST_RULE = f"a list of at most {MAX_STOP_STRINGS} strings, each of 1 to {MAX_STOP_CHARS} characters"
Prompt = _one_error(
    str | TokenIds | Annotated[list[str] | list[TokenIds], Field(min_length=1, max_length=1)],
    f"a string, a list of token ids (integers in [0, {MAX_INT}]), or a list holding one of those: one prompt per "
    "request (send more as separate requests)",
)
MaxTokens = Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
Temperature = Annotated[StrictFloat, Field(ge=0.0, le=2.0)]  # OpenAI's range; 0: greedy
TopP = Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
TopK = Annotated[StrictInt, Field(ge=-1, le=MAX_INT)]  # 0 or -1: no cut
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]


def _lone_surrogate(value: object) -> str | None:
    """The first string in `value` (nested lists and dicts too) that is not valid Unicode, if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for item in items if (bad := _lone_surrogate(item)) is not None), None)


class _Body(BaseModel):
    # allow_inf_nan: Python's JSON parser reads NaN and Infinity, which no range check would catch.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @field_validator("*", mode="wrap")
    @classmethod
    def _valid_unicode(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer (and no UTF-8 file name) takes: the
        # client's text is wrong, and sending it again can never work, so it is a 400 naming the field. It replaces
        # the field's own error ("must be a string"), which would not say what is wrong; a nested body's (a chat
        # message's) own check names the innermost field.
        try:
            result = handler(value)
        except ValidationError as error:
            if _lone_surrogate(value) is None or all(NOT_UNICODE in e["msg"] for e in error.errors()):
                raise  # not about Unicode, or a nested field's own check said it already
            raise ValueError(NOT_UNICODE) from None
        if _lone_surrogate(result) is not None:
            raise ValueError(NOT_UNICODE)
        return result


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: str
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK | None = None
    seed: Seed | None = None
    stop: _one_error(StopString | Stop | None, f"a string or {STOP_LIST_RULE}") = None
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    n: _unsupported(1, advice="n must be 1: send one request per sample") = 1
    best_of: _unsupported(1, advice="best_of must be 1: send one request per sample") = None
    presence_penalty: _unsupported(0, 0.0, advice="leave presence_penalty at 0") = None
    frequency_penalty: _unsupported(0, 0.0, advice="leave frequency_penalty at 0") = None
    repetition_penalty: _unsupported(1, 1.0, advice="leave repetition_penalty at 1") = None
    min_p: _unsupported(0, 0.0, advice="leave min_p at 0; use top_p or top_k") = None
    min_tokens: _unsupported(0, advice="leave min_tokens at 0; use ignore_eos to generate max_tokens") = None
    stop_token_ids: _unsupported([], advice="use stop strings") = None
    logit_bias: _unsupported({}, advice="the engine has no logit processors; leave logit_bias out") = None
    response_format: _unsupported({"type": "text"}, advice="only {'type': 'text'}: there is no guided decoding") = None
    echo: _unsupported(False, advice="the prompt is not returned; leave echo out") = None
    suffix: _unsupported(advice="there is no fill-in-the-middle; leave suffix out") = None

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
    max_tokens: MaxTokens | None = 16
    # 0: the chosen token's log-probability; the top alternatives are not computed.
    logprobs: _unsupported(0, advice="only logprobs 0 (the chosen token's log-probability)") = None

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
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
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool = False
    top_logprobs: _unsupported(0, advice="only top_logprobs 0: the chosen token's log-probability with logprobs") = None
    tools: _unsupported([], advice="there is no tool calling; leave tools out") = None
    tool_choice: _unsupported("none", "auto", advice="there is no tool calling; leave tool_choice out") = None
    functions: _unsupported([], advice="there is no function calling; leave functions out") = None
    function_call: _unsupported("none", "auto", advice="there is no function calling; leave function_call out") = None

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        return GenerateRequest(
            request_id, adapter, messages=messages, max_tokens=self.max_completion_tokens or self.max_tokens,
            sampling=self.sampling(logprobs=self.logprobs),
        )


class GenerateBody(_Body):
    """The plain /generate API: greedy by default, an optional adapter (or `model`), NDJSON when streaming."""

    prompt: _one_error(str | TokenIds, f"a string or a list of token ids (integers in [0, {MAX_INT}])")
    adapter: str | None = None
    model: str | None = None
    max_tokens: MaxTokens = 16
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    seed: Seed | None = None
    stop: _one_error(Stop, STOP_LIST_RULE) = Field(default_factory=list)
    ignore_eos: StrictBool = False
    logprobs: StrictBool = False
    stream: StrictBool = False

    def to_generate(self, request_id: str, adapter: str | None) -> GenerateRequest:
        sampling = self.model_dump(include={"temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "logprobs"})
        return GenerateRequest(request_id, adapter, prompt=self.prompt, max_tokens=self.max_tokens, sampling=sampling)


def _path(value: str) -> str:
    # A NUL byte or an over-long name is the client's mistake: a 400 here, not an OSError on every worker.
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    longest = max(len(part.encode()) for part in value.split("/"))
    if len(value) > MAX_PATH_CHARS or longest > MAX_PATH_PART_BYTES:
        raise ValueError(f"must be at most {MAX_PATH_CHARS} characters, each name in it {MAX_PATH_PART_BYTES} bytes")
    return value


class LoadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_path: Annotated[str, Field(min_length=1), AfterValidator(_path)]


class UnloadLoRAAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)
