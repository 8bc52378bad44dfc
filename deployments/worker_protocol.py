"""What the ingress, the workers and the popularity tracker send each other (plain dataclasses, pickled by Ray)."""
from dataclasses import dataclass, field

from fair_lora.errors import FairLoRAError


@dataclass
class GenerateRequest:
    request_id: str
    adapter: str | None  # None: the base model
    prompt: str | list[int] | None = None  # exactly one of prompt and messages is set
    messages: list[dict[str, str]] | None = None  # chat: rendered with the model's chat template on the worker
    max_tokens: int | None = None  # None: whatever the context leaves after the prompt
    sampling: dict = field(default_factory=dict)  # the other SamplingParams fields, validated by the engine
    client: str | None = None  # whom fair scheduling counts the request against (X-Client-Id / user); None: adapter
    arrival: float = 0.0  # time.time() when the ingress received it: latency metrics start there


@dataclass
class Admitted:
    """First item of every accepted stream: where the request landed."""

    worker: int  # the worker's rank
    hot_adapter: str | None  # the adapter that worker had merged when it took the request
    prompt_tokens: int

    @property
    def headers(self) -> dict[str, str]:
        return {"x-fair-lora-worker": str(self.worker), "x-fair-lora-hot-adapter": self.hot_adapter or ""}


@dataclass
class Rejected:
    """Only item of a stream the engine refused (unknown adapter, bad input, queue full)."""

    error: FairLoRAError


@dataclass
class Failed:
    """The worker could not serve the request (its engine process stopped): the ingress re-runs the request on
    another worker if nothing of it reached the client yet, else ends it with a 503."""

    message: str
    replica: str  # the worker replica's unique id: the router avoids it from then on


@dataclass
class Delta:
    """What a streamed request gained since its previous Delta (several engine steps when the stream lags)."""

    token_ids: list[int]
    text: str  # never taken back; the concatenation of every Delta's text is the request's text
    logprobs: list[float] | None  # of the new tokens, when asked
    tokens: list[str] | None  # the new tokens decoded one by one, when logprobs were asked
    finished: bool
    finish_reason: str | None  # "stop", "length", "error" (the engine failed on this request: `error` says how)
    error: str | None = None


@dataclass
class Completion:
    """A whole non-streamed request: the worker's one and only message for it."""

    admitted: Admitted
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    tokens: list[str] | None
    finish_reason: str | None
    error: str | None = None


@dataclass
class WorkerReport:
    """A worker's state, sent to the popularity tracker with every assignment poll."""

    rank: int
    world_size: int
    hot_adapter: str | None
    queue: int  # waiting + running requests
    runtime_adapters: dict[str, str]  # adapters loaded over HTTP after start: name -> path
    service: dict[str, float] = field(default_factory=dict)  # tokens served per client since the worker started
    declined: list[str] = field(default_factory=list)  # adapters whose merge did not pay here (not to be assigned)


@dataclass
class Assignment:
    hot_adapter: str | None
    planned: bool  # False: the tracker has seen too little traffic since it started; keep what you have
    runtime_adapters: dict[str, str]  # every worker should hold these, so a replaced worker catches up
