"""Async scheduling (step N+1 launched before step N's tokens are read, CUDA's default) changes when outputs
arrive, never what they are: run here on the CPU, where it is off by default, against the oracle and against
the synchronous engine on the same requests."""
import random

from fair_lora import SamplingParams
from tests.engine_helpers import assert_everything_freed, assert_matches_oracle, greedy, make_engine, request_mix

MAX_TOKENS = 8


def make_async(demo, **overrides):
    engine = make_engine(demo, async_scheduling=True, **overrides)
    assert engine.async_scheduling
    return engine


def test_outputs_come_one_step_late_and_match_peft_through_switches_preemption_and_chunks(demo, oracle):
    engine = make_async(demo, max_num_batched_tokens=6, block_size=4, num_kv_blocks=24, max_model_len=80)
    ids = [engine.add_request(p, a, greedy(MAX_TOKENS)) for p, a in request_mix(demo)]
    assert engine.step() == [], "the first step's tokens are read during the second"
    schedule = iter(["adapter-2", None, "adapter-4", "adapter-1", "adapter-5"])
    final = {}
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
        engine.set_hot_adapter(next(schedule, None))
    assert engine.num_preemptions > 0, "the cache was sized to force preemption"
    assert_matches_oracle(engine, oracle, [final[i] for i in ids], MAX_TOKENS)
    assert engine.blocks.num_free == engine.blocks.num_blocks and not engine.sequences
    assert all(seq.num_pending == 0 for seq in engine.scheduler.running), "nothing left in flight"


def test_stop_strings_seeds_and_length_limits_give_what_the_synchronous_engine_gives(demo):
    sync, lagged = make_engine(demo), make_async(demo)
    full = sync.generate(["Hello"], [None], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    requests = [
        ("Hello", None, SamplingParams(max_tokens=12, ignore_eos=True, stop=[full.text[3:5]])),
        ("Hello", "adapter-3", SamplingParams(max_tokens=9, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)),
        ("abc", "adapter-1", SamplingParams(max_tokens=1, ignore_eos=True, logprobs=True)),
        ("xyz", "adapter-0", SamplingParams(max_tokens=5, logprobs=True)),
    ]
    prompts, adapters, params = map(list, zip(*requests))
    expected, got = sync.generate(prompts, adapters, params), lagged.generate(prompts, adapters, params)
    assert expected[0].finish_reason == "stop"
    for want, have in zip(expected, got):
        assert (have.token_ids, have.text, have.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        assert have.logprobs == want.logprobs


def test_random_requests_with_aborts_in_flight_free_every_block_and_pin(demo):
    engine = make_async(
        demo, block_size=4, num_kv_blocks=40, max_num_seqs=24, max_num_batched_tokens=64, max_model_len=64,
        max_adapter_slots=3, auto_hot=True,
    )
    rng = random.Random(2)
    names = [*demo.adapters, None]
    live: list[str] = []
    added = aborted = finished = 0
    while added < 300 or engine.has_unfinished():
        for _ in range(min(rng.randint(0, 10), 300 - added)):
            prompt = [rng.randrange(3, 259) for _ in range(rng.randint(1, 24))]
            params = SamplingParams(max_tokens=rng.randint(1, 10), temperature=rng.choice([0.0, 0.8]), seed=added)
            live.append(engine.add_request(prompt, rng.choice(names), params))
            added += 1
        for request_id in rng.sample(live, k=min(len(live), rng.randint(0, 2))):
            aborted += engine.abort(request_id)  # often with a token of it in flight: that token is dropped
            live.remove(request_id)
        for out in engine.step():
            assert out.request_id in live, "no output after an abort"
            if out.finished:
                finished += 1
                live.remove(out.request_id)
                assert 1 <= len(out.token_ids) <= 10
    assert finished + aborted == 300 and aborted > 10
    assert_everything_freed(engine)
