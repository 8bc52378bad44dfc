"""The scheduler against a fake adapter pool (slots that take a few polls to load) and the real block manager,
driven by a loop that does what the engine does with a step's tokens; and the real adapter pool's slot rules."""
from collections import Counter

import pytest
import torch

from fair_lora import SamplingParams
from fair_lora.engine.arrival_queue import ArrivalQueue
from fair_lora.engine.block_manager import BlockManager
from fair_lora.engine.policy import FCFSPolicy, make_policy
from fair_lora.engine.scheduler import Scheduler
from fair_lora.engine.sequence import Sequence, SequenceStatus
from fair_lora.errors import AdapterPoolFullError
from fair_lora.outputs import RequestTimes
from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix


class FakePool:
    """`num_slots` device slots; a load answers False to the first `load_polls` prefetch calls (the one that starts
    it included). Eviction takes the least recently loaded adapter that is neither pinned nor loading."""

    def __init__(self, num_slots: int = 4, load_polls: int = 0) -> None:
        self.num_slots, self.load_polls = num_slots, load_polls
        self.polls_left: dict[str, int] = {}  # resident adapters -> polls before their slot is ready
        self.pins: Counter[str] = Counter()
        self.loads: list[str] = []

    def prefetch(self, name: str) -> bool:
        if name not in self.polls_left:
            if len(self.polls_left) == self.num_slots:
                victim = next((n for n, left in self.polls_left.items() if not self.pins[n] and not left), None)
                if victim is None:
                    return False
                del self.polls_left[victim]
            self.polls_left[name] = max(0, self.load_polls - 1)
            self.loads.append(name)
            return not self.load_polls
        if self.polls_left[name]:
            self.polls_left[name] -= 1
            return False
        return True

    def acquire(self, name: str) -> int:
        assert self.polls_left.get(name) == 0, f"{name} admitted before its slot was ready"
        self.pins[name] += 1
        return 0

    def release(self, name: str) -> None:
        self.pins[name] -= 1


def make_seq(request_id: str, adapter: str | None, prompt_len: int = 8, max_tokens: int = 4,
             arrival: float = 0.0, client: str | None = None) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Sequence(request_id, adapter, [1] * prompt_len, params, RequestTimes(arrival=arrival), client=client)


def make_scheduler(policy=None, pool=None, num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                   max_num_batched_tokens: int = 256) -> Scheduler:
    policy = FCFSPolicy() if policy is None else policy  # not `or`: a policy with an empty queue is falsy
    return Scheduler(BlockManager(num_blocks, block_size), policy, pool or FakePool(), max_num_seqs,
                     max_num_batched_tokens)


def run_step(scheduler: Scheduler) -> list[Sequence]:
    """What the engine does with a step: count the computed tokens, append a sampled one, finish at max_tokens.
    Returns the sequences admitted this step (those that were waiting before it)."""
    waiting = set(scheduler.waiting)
    out = scheduler.schedule()
    for s in out.scheduled:
        samples = s.samples_next_token
        s.seq.num_computed += s.num_new
        if samples:
            s.seq.token_ids.append(1)
            if s.seq.num_output >= s.seq.params.max_tokens:
                scheduler.finish(s.seq, "length")
    return [s.seq for s in out.scheduled if s.seq in waiting]


def test_arrival_queue_keeps_arrival_order_and_survives_removal_while_walking():
    queue = ArrivalQueue()
    seqs = [make_seq(f"r{i}", None, arrival=t) for i, t in enumerate([1.0, 2.0, 2.0, 3.0, 0.5])]
    for seq in seqs:
        queue.add(seq)
    assert [s.request_id for s in queue] == ["r4", "r0", "r1", "r2", "r3"]  # a late add walks in from the tail
    walked = []
    for seq in queue:
        walked.append(seq.request_id)
        if seq.request_id in ("r4", "r1"):
            queue.remove(seq)
    assert walked == ["r4", "r0", "r1", "r2", "r3"]
    assert [s.request_id for s in queue] == ["r0", "r2", "r3"]
    queue.requeue(seqs[1])  # arrived at 2.0 like r2: a preempted sequence goes ahead of same-time arrivals
    queue.requeue(seqs[4])
    assert [s.request_id for s in queue] == ["r4", "r0", "r1", "r2", "r3"]
    assert len(queue) == 5 and seqs[3] in queue and queue.head() is seqs[4]


def test_preempted_sequence_keeps_its_place_by_original_arrival():
    # 5 blocks of 4 tokens: two prompts of 8 take 4 and a third does not fit; their first decodes need 2 more.
    scheduler = make_scheduler(num_blocks=5, block_size=4)
    first, second, third = (make_seq(f"r{i}", None, prompt_len=8, max_tokens=8, arrival=i) for i in range(3))
    for seq in (first, second, third):
        scheduler.add(seq)
    assert run_step(scheduler) == [first, second]  # third does not fit: strict order keeps it waiting
    while second.status is SequenceStatus.RUNNING:
        run_step(scheduler)
    assert second.num_preemptions == 1 and second.num_computed == 0
    assert list(scheduler.waiting) == [second, third]  # back ahead of the later arrival, without a sort
    assert list(scheduler.running) == [first]


def test_request_waits_for_its_adapter_load_while_others_proceed():
    pool = FakePool(num_slots=4, load_polls=2)
    scheduler = make_scheduler(pool=pool)
    cold, base, also_cold = make_seq("cold", "b"), make_seq("base", None), make_seq("cold-2", "b")
    for seq in (cold, base, also_cold):
        scheduler.add(seq)
    assert run_step(scheduler) == [base]  # b's load started on the first step; nobody waits for it
    assert pool.loads == ["b"]
    assert run_step(scheduler) == []
    assert run_step(scheduler) == [cold, also_cold]  # admitted once the slot is ready, in order
    assert pool.loads == ["b"]  # one load for both


def test_busy_adapter_slots_do_not_block_the_queue():
    pool = FakePool(num_slots=1)
    scheduler = make_scheduler(pool=pool)
    running = make_seq("a-0", "a", max_tokens=3, arrival=0)
    scheduler.add(running)
    assert run_step(scheduler) == [running]
    blocked, behind = make_seq("b-0", "b", arrival=1), make_seq("a-1", "a", arrival=2)
    base = make_seq("x", None, arrival=3)
    for seq in (blocked, behind, base):
        scheduler.add(seq)
    assert run_step(scheduler) == [behind, base]  # b has no slot (a pins it): skipped, not a barrier
    while running.status is not SequenceStatus.FINISHED or behind.status is not SequenceStatus.FINISHED:
        assert blocked.status is SequenceStatus.WAITING
        run_step(scheduler)
    assert run_step(scheduler) == [blocked]  # a unpinned: b evicts it


def test_kv_memory_is_handed_out_in_strict_order():
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    first = make_seq("first", None, prompt_len=8, max_tokens=8, arrival=0)
    big, small = make_seq("big", None, prompt_len=12, arrival=1), make_seq("small", None, prompt_len=4, arrival=2)
    for seq in (first, big, small):
        scheduler.add(seq)
    assert run_step(scheduler) == [first]  # big needs 3 of the 2 free blocks; small would fit but must not pass
    assert big.status is small.status is SequenceStatus.WAITING


def test_admission_walks_only_as_far_as_it_admits():
    policy = FCFSPolicy()
    offered = []
    walk = policy.candidates

    def counted():
        for seq in walk():
            offered.append(seq)
            yield seq

    policy.candidates = counted
    scheduler = make_scheduler(policy=policy, num_blocks=4096, max_num_seqs=4)
    for i in range(5000):
        scheduler.add(make_seq(f"r{i}", None, arrival=i))
    assert len(run_step(scheduler)) == 4
    assert len(offered) <= 5  # the fifth is looked at, found over the sequence limit, and the walk ends
    assert len(scheduler.waiting) == 4996 and len(scheduler.running) == 4


def test_finish_of_waiting_and_running_sequences():
    scheduler = make_scheduler(max_num_seqs=1)
    running, waiting = make_seq("run", "a", arrival=0), make_seq("wait", "a", arrival=1)
    scheduler.add(running)
    scheduler.add(waiting)
    run_step(scheduler)
    scheduler.finish(waiting, "abort")
    scheduler.finish(running, "abort")
    assert not scheduler.has_unfinished() and scheduler.adapters.pins["a"] == 0
    assert scheduler.blocks.num_free == scheduler.blocks.num_blocks


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        make_policy("lottery")


# ---- the real adapter pool (CPU: loads are synchronous) ------------------------------------------------------


@pytest.fixture
def pool(demo):
    return make_engine(demo, mode="slora", max_adapter_slots=2).pool


def test_prefetched_slot_holds_the_adapter_and_is_evictable_until_pinned(pool):
    assert pool.prefetch("adapter-0") and pool.prefetch("adapter-2")
    for name in ("adapter-0", "adapter-2"):
        adapter, slot = pool.get(name), pool.slot_of[name]
        path, (a, b) = next(iter(adapter.weights.items()))
        slots = pool.linears[path].slots
        assert torch.equal(slots.a[slot, : adapter.rank], a) and torch.equal(slots.b[slot, :, : adapter.rank], b)
    pool.acquire("adapter-2")
    assert pool.prefetch("adapter-3")  # evicts adapter-0, the only unpinned one
    assert set(pool.slot_of) == {"adapter-2", "adapter-3"} and pool.pins["adapter-2"] == 1


def test_reloaded_slot_holds_exactly_the_new_adapter(pool):
    pool.prefetch("adapter-2")  # rank 16 on all seven projections
    pool.prefetch("adapter-3")
    pool.prefetch("adapter-1")  # rank 8 on q and v only, into adapter-2's slot: its larger rows must go
    slot, adapter = pool.slot_of["adapter-1"], pool.get("adapter-1")
    assert slot == 0 and pool.get("adapter-2").rank > adapter.rank
    for path, linear in pool.linears.items():
        a, b = adapter.weights.get(path, (None, None))
        r = 0 if a is None else adapter.rank
        expected_a, expected_b_t = torch.zeros_like(linear.slots.a[slot]), torch.zeros_like(linear.slots.b_t[slot])
        if r:
            expected_a[:r], expected_b_t[:r] = a, b.t()
        assert torch.equal(linear.slots.a[slot], expected_a) and torch.equal(linear.slots.b_t[slot], expected_b_t)
        assert linear.slots.ranks_host[0][slot] == int(linear.slots.ranks[0, slot]) == r, path


def test_pinned_slots_are_never_evicted(pool):
    pool.acquire("adapter-0")
    pool.acquire("adapter-1")
    assert not pool.can_acquire("adapter-2") and not pool.prefetch("adapter-2")
    with pytest.raises(AdapterPoolFullError):
        pool.acquire("adapter-2")
    assert set(pool.slot_of) == {"adapter-0", "adapter-1"}
    pool.release("adapter-1")
    assert pool.prefetch("adapter-2") and set(pool.slot_of) == {"adapter-0", "adapter-2"}


def test_merged_adapter_keeps_its_slot_under_slot_pressure(demo):
    engine = make_engine(demo, max_adapter_slots=2)
    engine.set_hot_adapter("adapter-0")
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    engine.generate(["Hello"] * 4, ["adapter-1", "adapter-2", "adapter-3", "adapter-4"], params)
    assert engine.pool.pins["adapter-0"] == 1 and "adapter-0" in engine.pool.slot_of
    assert sum(engine.pool.pins.values()) == 1


SMALL_CUDA = dict(num_kv_blocks=64, warmup=False)  # a small cache, not 90% of the device; slots start cold


@pytest.mark.gpu
def test_cuda_slot_load_is_asynchronous_and_complete_before_use(demo):
    engine = make_engine(demo, mode="slora", max_adapter_slots=2, device="cuda", **SMALL_CUDA)
    pool = engine.pool
    assert all(a.is_pinned() and b.is_pinned() for ad in pool.adapters.values() for a, b in ad.weights.values())
    pool.prefetch("adapter-0")
    while not pool.prefetch("adapter-0"):
        pass
    assert "adapter-0" not in pool.loading
    slot = pool.acquire("adapter-0")
    torch.cuda.synchronize()
    adapter = pool.get("adapter-0")
    for path, (a, b) in adapter.weights.items():
        slots = pool.linears[path].slots
        assert torch.equal(slots.a[slot, : adapter.rank].cpu(), a)
        assert torch.equal(slots.b[slot, :, : adapter.rank].cpu(), b)
    pool.prefetch("adapter-1")
    slot = pool.acquire("adapter-1")  # still loading: the current stream waits for its copies
    adapter = pool.get("adapter-1")
    path, (a, _) = next(iter(adapter.weights.items()))
    assert torch.equal(pool.linears[path].slots.a[slot, : adapter.rank].cpu(), a)


@pytest.mark.gpu
def test_cuda_engine_under_slot_pressure_matches_peft(demo, oracle):
    # 3 slots, one pinned by the merged adapter: the other five adapters and the base model take turns in two,
    # each cold one loaded asynchronously while the batch goes on.
    engine = make_engine(demo, device="cuda", dtype="float32", max_adapter_slots=3, **SMALL_CUDA)
    engine.set_hot_adapter("adapter-0")
    prompts, adapters = zip(*request_mix(demo, repeat=2))
    outputs = engine.generate(list(prompts), list(adapters), greedy(8))
    assert_matches_oracle(engine, oracle, outputs, 8)
