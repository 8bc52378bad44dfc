"""Continuous batching: every step runs the running sequences' next tokens (decode or the rest of a chunked
prefill) and admits waiting ones, in the policy's order, while the token budget, the sequence limit and the KV
blocks allow. When blocks run out, the most recently admitted sequence is preempted and later recomputed.

A waiting sequence whose adapter has no ready device slot starts its load and waits while the ones behind it are
admitted; KV memory, though, is handed out in strict order."""
from dataclasses import dataclass, field
from typing import Protocol

from fair_lora.engine.block_manager import BlockManager
from fair_lora.engine.policy import SchedulingPolicy
from fair_lora.engine.sequence import Sequence, SequenceStatus


class AdapterSlots(Protocol):
    """The adapter pool as the scheduler sees it: a running sequence pins its adapter's device slot."""

    def prefetch(self, name: str) -> bool: ...  # start its load if needed; True once its slot is ready
    def acquire(self, name: str) -> int: ...
    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new: int  # tokens computed this step

    @property
    def samples_next_token(self) -> bool:
        """Whether this step's tokens reach the end of seq.token_ids, so the step samples the next one."""
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
        self.waiting = policy  # the policy owns the waiting queue: len(), iteration, `in`
        self.running: dict[Sequence, None] = {}  # in admission order: the last one is preempted first

    def add(self, seq: Sequence) -> None:
        self.policy.add(seq)

    def has_unfinished(self) -> bool:
        return bool(len(self.policy) or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        for seq in list(self.running):
            if budget == 0 or seq.status is not SequenceStatus.RUNNING or seq.out_of_budget:
                continue  # out of budget: its last token is pending; it finishes when the host reads it
            num_new = min(seq.num_uncomputed, budget)
            while not self.blocks.can_allocate(seq, num_new):
                victim = next(reversed(self.running))
                self.preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                budget -= self._run(out, seq, num_new)
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        not_ready: set[str] = set()  # adapters whose slot is loading, or that no slot can take, this step
        for seq in self.policy.candidates():
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            num_new = min(seq.num_uncomputed, budget)
            ready = self._adapter_ready(seq.adapter, not_ready)  # starts its load: it overlaps the steps it waits
            if not self.blocks.can_allocate(seq, num_new):
                return  # KV memory in strict order, so a big request is not starved by small ones behind it
            if not ready:
                continue  # no head-of-line blocking: the ones behind it may go while its slot loads or is busy
            if seq.adapter is not None:
                self.adapters.acquire(seq.adapter)
            self.policy.admit(seq)
            seq.status = SequenceStatus.RUNNING
            self.running[seq] = None
            budget -= self._run(out, seq, num_new)

    def _adapter_ready(self, name: str | None, not_ready: set[str]) -> bool:
        if name is None:
            return True
        if name in not_ready:
            return False
        if self.adapters.prefetch(name):
            return True
        not_ready.add(name)
        return False

    def _run(self, out: SchedulerOutput, seq: Sequence, num_new: int) -> int:
        self.blocks.allocate(seq, num_new)
        out.scheduled.append(ScheduledSeq(seq, num_new))
        self.policy.charge(seq, num_new)
        return num_new

    def preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the cache, keep the tokens; the prefill redoes prompt + output."""
        self._release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.policy.requeue(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self._release(seq)
        if seq.status is not SequenceStatus.FINISHED:
            self.policy.finish(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        del self.running[seq]
        self.blocks.free(seq)
        if seq.adapter is not None:
            self.adapters.release(seq.adapter)
