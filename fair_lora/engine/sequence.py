"""One request as the engine tracks it: its tokens, its KV blocks, and how far its cache is computed."""
import enum
from dataclasses import dataclass, field

import torch

from fair_lora.outputs import RequestTimes
from fair_lora.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    adapter: str | None  # None: the base model
    prompt_token_ids: list[int]
    params: SamplingParams
    times: RequestTimes
    generator: torch.Generator | None = None  # seeded per request, so sampling ignores batch composition
    client: str | None = None  # whom fair scheduling counts this request against; None: its adapter
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    logprobs: list[float] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose k/v are in the cache
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    text: str = ""
    checked_chars: int = 0  # characters of `text` already searched for stop strings
    stable_text: str = ""  # text of the output tokens before read_offset (it ends with whole characters)
    prefix_offset: int = 0  # incremental detokenization windows (engine/detokenizer.py)
    read_offset: int = 0
    num_emitted: int = 0  # output tokens already reported, for incremental outputs
    num_preemptions: int = 0
    # Tokens sampled by a launched step whose values the host has not read yet (async scheduling): they count
    # as tokens (the next step computes them, from the device) but are not in token_ids until resolved.
    num_pending: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def num_output(self) -> int:
        """Output tokens the host has (pending ones not counted)."""
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def out_of_budget(self) -> bool:
        """Its last token is sampled or pending: scheduling it again would compute a token nobody gets."""
        return self.num_output + self.num_pending >= self.params.max_tokens

    @property
    def output_ids(self) -> list[int]:
        """A copy: O(output length). Per-step code slices `output_slice` or counts with `num_output` instead,
        or a long generation would pay a copy per token and step (quadratic in its length)."""
        return self.token_ids[len(self.prompt_token_ids) :]

    def output_slice(self, start: int, end: int | None = None) -> list[int]:
        """output_ids[start:end] without copying the rest (start, end >= 0)."""
        first = len(self.prompt_token_ids)
        return self.token_ids[first + start : None if end is None else first + end]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
