"""Waiting sequences in arrival order, kept incrementally instead of sorted every step.

A doubly linked list with a dict from sequence to node: a new request joins at the tail (it arrived last), a
preempted one walks in from the head to its original place (it arrived early, so the walk is short), removal is
O(1), and a walk over the queue survives the removal of the sequence it just yielded, so the scheduler can admit
while it walks."""
from collections.abc import Iterator

from fair_lora.engine.sequence import Sequence


class _Node:
    __slots__ = ("seq", "prev", "next")

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.prev: _Node | None = None
        self.next: _Node | None = None


class ArrivalQueue:
    def __init__(self) -> None:
        self._nodes: dict[Sequence, _Node] = {}
        self._head: _Node | None = None
        self._tail: _Node | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def __contains__(self, seq: object) -> bool:
        return seq in self._nodes

    def __iter__(self) -> Iterator[Sequence]:
        """Front to back. The sequence just yielded may be removed before the next one is asked for."""
        node = self._head
        while node is not None:
            yield node.seq
            node = node.next  # a removed node keeps its links, so the walk goes on from where it was

    def head(self) -> Sequence | None:
        return self._head.seq if self._head else None

    def add(self, seq: Sequence) -> None:
        """A new request: behind everything that arrived at the same time or earlier."""
        arrival, after = seq.times.arrival, self._tail
        while after is not None and after.seq.times.arrival > arrival:
            after = after.prev
        self._link(_Node(seq), after)

    def requeue(self, seq: Sequence) -> None:
        """A preempted sequence: back at its place by its original arrival, ahead of same-time arrivals."""
        arrival, before = seq.times.arrival, self._head
        while before is not None and before.seq.times.arrival < arrival:
            before = before.next
        self._link(_Node(seq), before.prev if before else self._tail)

    def remove(self, seq: Sequence) -> None:
        node = self._nodes.pop(seq)
        if node.prev:
            node.prev.next = node.next
        else:
            self._head = node.next
        if node.next:
            node.next.prev = node.prev
        else:
            self._tail = node.prev

    def discard(self, seq: Sequence) -> None:
        if seq in self._nodes:
            self.remove(seq)

    def _link(self, node: _Node, after: _Node | None) -> None:
        """Insert `node` behind `after` (None: at the head)."""
        assert node.seq not in self._nodes, "a sequence is queued once"
        self._nodes[node.seq] = node
        node.prev, node.next = after, (after.next if after else self._head)
        if node.prev:
            node.prev.next = node
        else:
            self._head = node
        if node.next:
            node.next.prev = node
        else:
            self._tail = node
