"""Which waiting sequence is admitted first. A small interface chosen by name; FCFS for now."""
from collections.abc import Iterable
from typing import Protocol

from fair_lora.engine.sequence import Sequence


class SchedulingPolicy(Protocol):
    def order(self, waiting: Iterable[Sequence]) -> list[Sequence]: ...


class FCFSPolicy:
    """First come, first served; a preempted sequence keeps its original arrival time, so it goes first."""

    def order(self, waiting: Iterable[Sequence]) -> list[Sequence]:
        return sorted(waiting, key=lambda s: s.times.arrival)


POLICIES: dict[str, type] = {"fcfs": FCFSPolicy}


def make_policy(name: str, fair_weights: dict[str, float] | None = None) -> SchedulingPolicy:
    if name not in POLICIES:
        raise ValueError(f"scheduling_policy {name!r} is unknown; choose one of {sorted(POLICIES)}")
    return POLICIES[name]()
