"""What an engine-core process and its client send each other over their socket (pickled dataclasses).

Client → core: Call (a named engine method, answered by a Reply), Abort, Shutdown.
Core → client: Ready once, then a Batch per loop turn that did anything (the replies to the calls it ran,
and the step's report: every request's new tokens in one message), or Fatal before it exits.
"""
from dataclasses import dataclass, field
from typing import Any

from fair_lora.engine.step_stats import StepStats


@dataclass
class Call:
    call_id: int
    method: str  # one of core_process.CALLS
    args: tuple = ()


@dataclass
class Abort:
    request_id: str


@dataclass
class Shutdown:
    pass


@dataclass
class Ready:
    model_dir: str
    base_model_name: str
    max_model_len: int
    vocab_size: int
    adapters: list[str]
    memory_plan: str  # the plan's log line
    warmup_seconds: float
    device_name: str  # the GPU's name, or "cpu"


@dataclass
class Reply:
    call_id: int
    value: Any = None
    error: BaseException | None = None


@dataclass
class TokenDelta:
    """One request's tokens of one step."""

    request_id: str
    token_ids: list[int]  # new this step
    logprobs: list[float] | None  # of those tokens, when asked
    finish_reason: str | None  # None: it goes on
    error: str | None = None  # finish_reason "error": what failed


@dataclass
class StepReport:
    deltas: list[TokenDelta]
    stats: StepStats  # the step's batch, tokens, corrected tokens, hot adapter
    waiting: int
    running: int


@dataclass
class Batch:
    replies: list[Reply] = field(default_factory=list)
    report: StepReport | None = None


@dataclass
class Fatal:
    """The core is exiting: the engine failed in a way that no request can be blamed for (or did not start)."""

    error: str  # the traceback
