"""Virtual Token Counter (VTC): fair shares of tokens across clients (Sheng et al., "Fairness in Serving Large
Language Models", arXiv 2401.00588), with the rules of S-LoRA's `vtc_fair` request queue.

* A counter per client (a request's `client`, or its adapter; the base model is its own client).
* Admission adds input_tokens / w; every generated token adds 2 / w (S-LoRA's output weight), counted when the
  step that samples it is scheduled. A recomputation after preemption and the chunks of a chunked prefill add
  nothing more: the input is counted once per request, and only the step that samples counts a token.
* A client with no queued or running work that becomes active again is lifted to max(own, min over active
  clients): idle time banks no credit.
* Admission offers the waiting request of the client with the smallest counter (FCFS within a client); the
  scheduler stops at the first one that does not fit in KV memory.

Service is counted in tokens, not compute cost: a hot (merged) adapter's cheaper tokens weigh the same."""
import heapq
from collections import Counter
from collections.abc import Iterator

from fair_lora.engine.arrival_queue import ArrivalQueue
from fair_lora.engine.sequence import Sequence

INPUT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0

Client = str | None


def client_of(seq: Sequence) -> Client:
    return seq.client if seq.client is not None else seq.adapter


class VTCPolicy:
    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self.counters: dict[Client, float] = {}
        self.queues: dict[Client, ArrivalQueue] = {}  # clients with waiting sequences only
        self.active: Counter[Client] = Counter()  # client -> its waiting + running sequences
        self._charged: set[Sequence] = set()  # admitted at least once: its input is counted
        self._num_waiting = 0

    def __len__(self) -> int:
        return self._num_waiting

    def __iter__(self) -> Iterator[Sequence]:
        for queue in list(self.queues.values()):
            yield from queue

    def __contains__(self, seq: object) -> bool:
        queue = self.queues.get(client_of(seq)) if isinstance(seq, Sequence) else None
        return queue is not None and seq in queue

    def weight(self, client: Client) -> float:
        return self.weights.get(client, 1.0) if client is not None else 1.0

    def add(self, seq: Sequence) -> None:
        client = client_of(seq)
        if not self.active[client]:
            self._lift(client)
        self.active[client] += 1
        self.queues.setdefault(client, ArrivalQueue()).add(seq)
        self._num_waiting += 1

    def requeue(self, seq: Sequence) -> None:
        self.queues.setdefault(client_of(seq), ArrivalQueue()).requeue(seq)
        self._num_waiting += 1

    def candidates(self) -> Iterator[Sequence]:
        """The smallest counter's client first, its earliest request first; ties go to the earlier request.
        A client's counter is read again after each of its offers, since admission raises it."""
        walks = {c: iter(q) for c, q in self.queues.items()}
        heap = []
        for rank, (client, walk) in enumerate(walks.items()):
            head = next(walk)
            heap.append((self.counters[client], head.times.arrival, rank, client, head))
        heapq.heapify(heap)
        while heap:
            _, _, rank, client, seq = heapq.heappop(heap)
            yield seq
            head = next(walks[client], None)
            if head is not None:
                heapq.heappush(heap, (self.counters[client], head.times.arrival, rank, client, head))

    def admit(self, seq: Sequence) -> None:
        client = client_of(seq)
        self._dequeue(client, seq)
        if seq not in self._charged:
            self._charged.add(seq)
            self.counters[client] += INPUT_WEIGHT * len(seq.prompt_token_ids) / self.weight(client)

    def charge(self, seq: Sequence, num_new: int) -> None:
        if seq.num_computed + num_new == seq.num_tokens:  # this step samples a token
            client = client_of(seq)
            self.counters[client] += OUTPUT_WEIGHT / self.weight(client)

    def finish(self, seq: Sequence) -> None:
        client = client_of(seq)
        if seq in self:
            self._dequeue(client, seq)
        self._charged.discard(seq)
        self.active[client] -= 1
        if self.active[client] <= 0:
            del self.active[client]

    def _dequeue(self, client: Client, seq: Sequence) -> None:
        queue = self.queues[client]
        queue.remove(seq)
        self._num_waiting -= 1
        if not queue:
            del self.queues[client]

    def _lift(self, client: Client) -> None:
        own = self.counters.get(client, 0.0)
        others = [self.counters[c] for c in self.active if c != client]
        self.counters[client] = max(own, min(others)) if others else own
