"""What the last engine step did, for metrics: batch size, tokens, and how many took the correction path."""
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStats:
    num_seqs: int = 0
    num_tokens: int = 0
    num_corrected_tokens: int = 0  # tokens with any correction entry (cold adapters and base under a hot merge)
    num_preempted: int = 0
    hot_adapter: str | None = None
    seconds: float = 0.0
    num_adapters: int = 0  # distinct adapters of the step's sequences (the base model counts as one)
