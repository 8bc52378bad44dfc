"""Virtual Token Counter: the flood case through the engine, the paper's bound on the service difference between
backlogged clients, weights, idle clients, and counters that preemption and chunked prefill leave exact."""
import random

import pytest

from fair_lora import EngineConfig, SamplingParams
from fair_lora.engine.policy import FCFSPolicy
from fair_lora.engine.scheduler import Scheduler
from fair_lora.engine.sequence import Sequence, SequenceStatus
from fair_lora.engine.vtc import INPUT_WEIGHT, OUTPUT_WEIGHT, VTCPolicy, client_of
from tests.engine_helpers import make_engine
from tests.test_scheduler import make_scheduler, make_seq


class ServiceMeter:
    """Drives a scheduler like the engine does and measures each client's service as it is delivered: a prompt
    token when its prefill computes it the first time (chunks as they run, never a recomputation), an output
    token (weight 2) when it is sampled. For each pair of clients it follows D = the difference of their weighted
    service accumulated while both are backlogged (a client is backlogged while it has a waiting request);
    `worst[pair]` is the largest max(D) - min(D) of one such period: the largest difference over any interval
    in which both were backlogged, the quantity the paper bounds."""

    def __init__(self, scheduler: Scheduler, weights: dict[str, float] | None = None) -> None:
        self.scheduler, self.weights = scheduler, weights or {}
        self.service: dict[str | None, float] = {}
        self.prefilled: dict[Sequence, int] = {}
        self.periods: dict[tuple, list[float]] = {}  # pair -> [D, max D, min D] of the current period
        self.worst: dict[tuple, float] = {}
        self.admitted: list[Sequence] = []

    def step(self) -> None:
        scheduler = self.scheduler
        waiting = set(scheduler.waiting)
        assert len(scheduler.waiting) == len(waiting)  # the policy's count follows its queues
        backlogged = {client_of(s) for s in waiting}
        before = dict(self.service)
        out = scheduler.schedule()
        self.admitted += [s.seq for s in out.scheduled if s.seq in waiting]
        for s in out.scheduled:
            seq, samples, client = s.seq, s.samples_next_token, client_of(s.seq)
            done = min(seq.num_computed + s.num_new, len(seq.prompt_token_ids))
            new_prompt = max(0, done - self.prefilled.get(seq, 0))
            self.prefilled[seq] = self.prefilled.get(seq, 0) + new_prompt
            self.service[client] = self.service.get(client, 0.0) + INPUT_WEIGHT * new_prompt + OUTPUT_WEIGHT * samples
            seq.num_computed += s.num_new
            if samples:
                seq.token_ids.append(1)
                if seq.num_output >= seq.params.max_tokens:
                    scheduler.finish(seq, "length")
        self._follow(backlogged, before)

    def _follow(self, backlogged: set, before: dict) -> None:
        clients = sorted(backlogged, key=str)
        pairs = {(f, g) for i, f in enumerate(clients) for g in clients[i + 1 :]}
        for pair in set(self.periods) - pairs:
            del self.periods[pair]  # a new backlogged period starts from zero
        for pair in pairs:
            gained = [(self.service.get(c, 0.0) - before.get(c, 0.0)) / self.weights.get(c, 1.0) for c in pair]
            d, high, low = self.periods.get(pair, [0.0, 0.0, 0.0])
            d += gained[0] - gained[1]
            self.periods[pair] = [d, max(high, d), min(low, d)]
            self.worst[pair] = max(self.worst.get(pair, 0.0), max(high, d) - min(low, d))

    def run(self, steps: int | None = None) -> None:
        n = 0
        while self.scheduler.has_unfinished() and (steps is None or n < steps):
            self.step()
            n += 1


def paper_bound(seqs: list[Sequence], kv_tokens: int, min_weight: float = 1.0) -> float:
    """2U, U = max(w_p·L_input, w_q·M): the longest prompt, and M the tokens a running batch can hold (Theorem 4.3
    of arXiv 2401.00588; with weights, in units of service / weight)."""
    longest = max(len(s.prompt_token_ids) for s in seqs)
    return 2 * max(INPUT_WEIGHT * longest, OUTPUT_WEIGHT * kv_tokens) / min_weight


def backlog(counts: dict[str, int], seed: int, prompt=(4, 24), output=(2, 12)) -> list[Sequence]:
    """counts[c] requests of each client, interleaved at random, arriving in that order; random sizes."""
    rng = random.Random(seed)
    owners = [c for c, n in counts.items() for _ in range(n)]
    rng.shuffle(owners)
    return [
        make_seq(f"{c}-{i}", None, rng.randint(*prompt), rng.randint(*output), arrival=i, client=c)
        for i, c in enumerate(owners)
    ]


def meter_for(policy, seqs: list[Sequence], weights=None, **limits) -> ServiceMeter:
    scheduler = make_scheduler(policy=policy, **limits)
    for seq in seqs:
        scheduler.add(seq)
    return ServiceMeter(scheduler, weights)


KV = dict(num_blocks=16, block_size=4, max_num_seqs=8)  # 64 tokens of KV: memory, not the sequence limit, binds


@pytest.mark.parametrize("by_client", [False, True])
def test_flood_of_one_adapter_does_not_starve_another(demo, by_client):
    engine = make_engine(demo, mode="slora", scheduling_policy="vtc", max_num_seqs=4)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    if by_client:  # two clients on one adapter: fairness follows the client, not the adapter
        flood = [engine.add_request([5] * 8, "adapter-0", params, client="bulk") for _ in range(48)]
        light = [engine.add_request([5] * 8, "adapter-0", params, client="light") for _ in range(6)]
    else:
        flood = [engine.add_request([5] * 8, "adapter-0", params) for _ in range(48)]
        light = [engine.add_request([5] * 8, "adapter-1", params) for _ in range(6)]
    order = finish_order(engine)
    last_light = max(order.index(r) for r in light)
    assert sum(order.index(r) < last_light for r in flood) <= 12  # within the first quarter of the flood


def test_flood_under_fcfs_serves_the_whole_flood_first(demo):
    engine = make_engine(demo, mode="slora", scheduling_policy="fcfs", max_num_seqs=4)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    flood = [engine.add_request([5] * 8, "adapter-0", params) for _ in range(48)]
    light = [engine.add_request([5] * 8, "adapter-1", params) for _ in range(6)]
    order = finish_order(engine)
    assert max(order.index(r) for r in flood) < min(order.index(r) for r in light)


def finish_order(engine) -> list[str]:
    order = []
    while engine.has_unfinished():
        order += [o.request_id for o in engine.step() if o.finished]
    return order


def test_admission_follows_the_smallest_weighted_counter():
    # a (weight 1) and b (weight 2) queued together. a's first request goes first (tie: earlier arrival):
    # a = 10 + 2 (its prefill samples a token); then b: 30/2 + 2/2 = 16; a (12) < b (16): a again, 12 + 12 = 24;
    # then b (16 < 24): 16 + 16 = 32.
    seqs = [make_seq(n, None, p, 4, arrival=i, client=n[0]) for i, (n, p) in
            enumerate([("a1", 10), ("a2", 10), ("b1", 30), ("b2", 30)])]
    policy = VTCPolicy({"b": 2.0})
    meter = meter_for(policy, seqs)
    meter.step()
    assert [s.request_id for s in meter.admitted] == ["a1", "b1", "a2", "b2"]
    assert policy.counters == {"a": 24.0, "b": 32.0}


def test_two_backlogged_clients_stay_within_the_paper_bound():
    seqs = backlog({"a": 90, "b": 30}, seed=1)  # a sends three times as many requests
    vtc, fcfs = meter_for(VTCPolicy(), seqs, **KV), meter_for(FCFSPolicy(), backlog({"a": 90, "b": 30}, seed=1), **KV)
    vtc.run()
    fcfs.run()
    bound = paper_bound(seqs, kv_tokens=64)
    assert vtc.worst[("a", "b")] <= bound
    assert fcfs.worst[("a", "b")] > 4 * bound  # the meter tells them apart: FCFS gives a three times the service


def test_many_backlogged_clients_stay_within_the_paper_bound():
    counts = {f"c{i}": 25 for i in range(6)}
    seqs = backlog(counts, seed=2, prompt=(2, 30), output=(1, 16))
    meter = meter_for(VTCPolicy(), seqs, num_blocks=32, block_size=4, max_num_seqs=12)
    meter.run()
    bound = paper_bound(seqs, kv_tokens=128)
    assert len(meter.worst) == 15 and max(meter.worst.values()) <= bound


def test_weights_one_to_two_give_one_to_two_service():
    weights = {"a": 1.0, "b": 2.0}
    seqs = [make_seq(f"{c}-{i}", None, 8, 8, arrival=2 * i + (c == "b"), client=c) for i in range(80) for c in "ab"]
    meter = meter_for(VTCPolicy(weights), seqs, weights, **KV)
    while all(any(client_of(s) == c for s in meter.scheduler.waiting) for c in "ab"):
        meter.step()
    a, b = meter.service["a"], meter.service["b"]
    assert abs(a - b / 2) <= paper_bound(seqs, kv_tokens=64)
    assert 1.9 <= b / a <= 2.1


class VTCWithoutLift(VTCPolicy):
    def _lift(self, client) -> None:
        self.counters.setdefault(client, 0.0)


@pytest.mark.parametrize("policy, bursts", [(VTCPolicy, False), (VTCWithoutLift, True)])
def test_a_client_that_was_idle_gets_no_burst(policy, bursts):
    busy = [make_seq(f"a-{i}", None, 8, 8, arrival=i, client="a") for i in range(300)]
    meter = meter_for(policy(), busy, **KV)
    meter.run(steps=200)  # a alone: its counter runs far ahead of b's, which never had work
    late = [make_seq(f"b-{i}", None, 8, 8, arrival=1000 + i, client="b") for i in range(100)]
    for seq in late:
        meter.scheduler.add(seq)
    meter.run(steps=150)
    assert (meter.worst[("a", "b")] > paper_bound(busy, kv_tokens=64)) is bursts


@pytest.mark.parametrize("limits", [
    dict(num_blocks=6, block_size=4, max_num_seqs=8),  # 24 tokens of KV for requests of 16: preemptions
    dict(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=8),  # prompts of 20 in 3 chunks
])
def test_preemption_and_chunked_prefill_count_every_token_once(limits):
    prompt = 8 if limits["num_blocks"] == 6 else 20
    seqs = [make_seq(f"{c}-{i}", None, prompt, 8, arrival=2 * i + (c == "b"), client=c) for i in range(6) for c in "ab"]
    policy = VTCPolicy({"b": 2.0})
    meter = meter_for(policy, seqs, {"b": 2.0}, **limits)
    meter.run()
    assert all(s.status is SequenceStatus.FINISHED for s in seqs)
    if limits["num_blocks"] == 6:
        assert sum(s.num_preemptions for s in seqs) > 0
    cost = 6 * (prompt + 2 * 8)
    assert policy.counters == {"a": cost, "b": cost / 2}
    assert meter.service == {"a": cost, "b": cost}  # what was delivered: each token once


def test_fair_weights_is_client_weights_deprecated_old_name():
    with pytest.warns(DeprecationWarning, match="client_weights"):
        config = EngineConfig(scheduling_policy="vtc", fair_weights={"a": 2.0})
    assert config.client_weights == {"a": 2.0}
    with pytest.raises(ValueError, match="client_weights only"):
        EngineConfig(fair_weights={"a": 2.0}, client_weights={"a": 1.0})
    with pytest.raises(ValueError, match="client_weights must be positive"):
        EngineConfig(fair_weights={"a": 0})


def test_fcfs_admits_in_arrival_order_whoever_sends():
    seqs = backlog({"a": 40, "b": 10}, seed=3)
    meter = meter_for(FCFSPolicy(), seqs, **KV)
    meter.run()
    first_admissions = list(dict.fromkeys(meter.admitted))  # a preempted sequence is admitted again later
    assert first_admissions == sorted(seqs, key=lambda s: s.times.arrival)


def test_vtc_bench_tiny_run_writes_results(tmp_path, demo_root):
    import json

    from benchmarks.vtc.bench import WORKLOADS, main

    files = main(["--tiny", "--out", str(tmp_path), "--demo-dir", str(demo_root)])
    assert set(files) == {"json", "md", "png"}
    for path in files.values():
        assert path.name.startswith("vtc_bench_") and path.stem.endswith("_cpu-tiny") and path.stat().st_size > 0
    results = json.loads(files["json"].read_text())
    assert set(results["workloads"]) == {w.name for w in WORKLOADS}
    for name, runs in results["workloads"].items():
        assert runs["vtc"]["max_diff"] <= runs["fcfs"]["max_diff"], name
        assert runs["vtc"]["throughput_tok_s"] > 0 and runs["vtc"]["series"]
    assert [t["workload"] for t in results["targets"]] == ["overload", "on_off_overload"]
    assert "| target |" in files["md"].read_text()
