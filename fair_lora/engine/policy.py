"""Which waiting sequence is offered for admission first: a small interface chosen by name.

A policy owns the waiting queue. The scheduler tells it what happens to a sequence (added, preempted, admitted,
scheduled, finished) and walks `candidates()` while it admits; the policy keeps its order incrementally, so no
step sorts the queue."""
from collections.abc import Iterator
from typing import Protocol

from fair_lora.engine.arrival_queue import ArrivalQueue
from fair_lora.engine.sequence import Sequence
from fair_lora.engine.vtc import VTCPolicy


class SchedulingPolicy(Protocol):
    def __len__(self) -> int: ...  # waiting sequences
    def __iter__(self) -> Iterator[Sequence]: ...
    def __contains__(self, seq: object) -> bool: ...
    def add(self, seq: Sequence) -> None: ...  # a new request
    def requeue(self, seq: Sequence) -> None: ...  # a preempted sequence, to be recomputed
    def candidates(self) -> Iterator[Sequence]: ...  # admission order; the one yielded may be admitted meanwhile
    def admit(self, seq: Sequence) -> None: ...  # it leaves the queue for the running batch
    def charge(self, seq: Sequence, num_new: int) -> None: ...  # it runs num_new tokens this step
    def finish(self, seq: Sequence) -> None: ...  # finished or aborted, from the queue or the batch


class FCFSPolicy:
    """First come, first served; a preempted sequence goes back to its place by its original arrival time."""

    def __init__(self) -> None:
        self.queue = ArrivalQueue()

    def __len__(self) -> int:
        return len(self.queue)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.queue)

    def __contains__(self, seq: object) -> bool:
        return seq in self.queue

    def add(self, seq: Sequence) -> None:
        self.queue.add(seq)

    def requeue(self, seq: Sequence) -> None:
        self.queue.requeue(seq)

    def candidates(self) -> Iterator[Sequence]:
        return iter(self.queue)

    def admit(self, seq: Sequence) -> None:
        self.queue.remove(seq)

    def charge(self, seq: Sequence, num_new: int) -> None:
        pass

    def finish(self, seq: Sequence) -> None:
        self.queue.discard(seq)


def make_policy(name: str, client_weights: dict[str, float] | None = None) -> SchedulingPolicy:
    """`client_weights` (vtc): client -> weight, 1 for clients not named."""
    if name == "fcfs":
        return FCFSPolicy()
    if name == "vtc":
        return VTCPolicy(client_weights)
    raise ValueError(f"scheduling_policy {name!r} is unknown; choose one of ['fcfs', 'vtc']")
