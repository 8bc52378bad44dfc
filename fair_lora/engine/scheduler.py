"""Continuous batching: every step runs the running sequences' next tokens (decode or the rest of a chunked
prefill) and admits waiting ones while the token budget, the sequence limit and the KV blocks allow.
When blocks run out, the most recently admitted sequence is preempted and later recomputed."""
from dataclasses import dataclass, field
from typing import Protocol

from fair_lora.engine.block_manager import BlockManager
from fair_lora.engine.policy import SchedulingPolicy
from fair_lora.engine.sequence import Sequence, SequenceStatus


class AdapterSlots(Protocol):
    """The adapter pool as the scheduler sees it: a running sequence pins its adapter's device slot."""

    def can_acquire(self, name: str) -> bool: ...
    def acquire(self, name: str) -> int: ...
    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new: int  # tokens computed this step; a sample is drawn when they reach the end of seq.token_ids

    @property
    def samples(self) -> bool:
        return self.seq.num_computed + self.num_new == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.scheduled)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        policy: SchedulingPolicy,
        adapters: AdapterSlots,
        max_num_seqs: int,
        max_num_batched_tokens: int,
    ) -> None:
        self.blocks, self.policy, self.adapters = blocks, policy, adapters
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []  # in admission order: the last one is preempted first

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        for seq in list(self.running):
            if budget == 0 or seq not in self.running:
                continue
            num_new = min(seq.num_uncomputed, budget)
            while not self.blocks.can_allocate(seq, num_new):
                victim = self.running[-1]
                self.preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.allocate(seq, num_new)
                out.scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        for seq in self.policy.order(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            if seq.adapter is not None and not self.adapters.can_acquire(seq.adapter):
                return  # every slot is pinned: wait for a running sequence to finish (strict order, no starvation)
            num_new = min(seq.num_uncomputed, budget)
            if not self.blocks.can_allocate(seq, num_new):
                return
            if seq.adapter is not None:
                self.adapters.acquire(seq.adapter)
            self.waiting.remove(seq)
            self.blocks.allocate(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new

    def preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the cache, keep the tokens; the prefill redoes prompt + output."""
        self._release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.RUNNING:
            self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        if seq.adapter is not None:
            self.adapters.release(seq.adapter)
