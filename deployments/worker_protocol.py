"""What the ingress, the workers and the popularity actor send each other (plain dataclasses, pickled by Ray)."""
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


@dataclass
class Admitted:
    """First item of every accepted stream: where the request landed."""

    worker: int  # the worker's rank
    hot_adapter: str | None  # the adapter that worker had merged when it took the request
    prompt_tokens: int


@dataclass
class Rejected:
    """Only item of a stream the engine refused (unknown adapter, bad input, queue full)."""

    error: FairLoRAError


@dataclass
class Delta:
    token_ids: list[int]  # new since the previous Delta
    text: str  # all text so far (a stop string cut it where it matched)
    logprobs: list[float] | None  # of the new tokens, when asked
    tokens: list[str] | None  # the new tokens decoded one by one, when logprobs were asked
    finished: bool
    finish_reason: str | None


@dataclass
class WorkerReport:
    """A worker's state, sent to the popularity actor with every assignment poll."""

    rank: int
    world_size: int
    hot_adapter: str | None
    queue: int  # waiting + running requests
    runtime_adapters: dict[str, str]  # adapters loaded over HTTP after start: name -> path


@dataclass
class Assignment:
    hot_adapter: str | None
    planned: bool  # False: the actor has seen too little traffic since it started; keep what you have
    runtime_adapters: dict[str, str]  # every worker should hold these, so a replaced worker catches up
