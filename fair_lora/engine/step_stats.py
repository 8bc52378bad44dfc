"""What the last engine step did, for metrics: batch size, tokens, and how many took the correction path; and
the totals since start, for benchmarks (differences of two readings describe the steps between them)."""
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


@dataclass
class StepTotals:
    steps: int = 0
    decode_only_steps: int = 0  # one new token per sequence: the steps a decode CUDA graph can take
    tokens: int = 0
    corrected_tokens: int = 0  # took the correction path (see StepStats)
    seconds: float = 0.0  # wall time inside step(): schedule, forward, sample, postprocess
    preemptions: int = 0

    def add(self, step: StepStats) -> None:
        self.preemptions += step.num_preempted
        if step.num_seqs == 0:
            return
        self.steps += 1
        self.decode_only_steps += step.num_tokens == step.num_seqs
        self.tokens += step.num_tokens
        self.corrected_tokens += step.num_corrected_tokens
        self.seconds += step.seconds
