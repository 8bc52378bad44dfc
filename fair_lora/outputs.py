"""What the engine returns for a request: the whole result so far, after every step (for streaming)."""
from dataclasses import dataclass, field


@dataclass
class RequestTimes:
    arrival: float  # time.monotonic() when the request was added
    first_token: float | None = None
    finish: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    adapter: str | None  # None: the base model
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None  # "stop" (eos or a stop string), "length", "abort", "error"
    times: RequestTimes
    logprobs: list[float] | None = None  # of each chosen token, when asked
    new_token_ids: list[int] = field(default_factory=list)  # produced by the last step only
    error: str | None = None  # finish_reason "error": what failed while this request was computed
