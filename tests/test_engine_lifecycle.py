"""Requests come and go: aborts, preemption and finishing return every KV block and every adapter pin."""
import random

import pytest

from fair_lora import AdapterInUseError, RequestError, SamplingParams
from tests.engine_helpers import assert_everything_freed, make_engine


def test_thousand_random_requests_with_aborts_and_preemption_free_every_block(demo):
    engine = make_engine(
        demo, block_size=4, num_kv_blocks=40, max_num_seqs=24, max_num_batched_tokens=64, max_model_len=64,
        max_adapter_slots=3, auto_hot=True,
    )
    rng = random.Random(1)
    names = [*demo.adapters, None]
    live: list[str] = []
    added = aborted = finished = 0
    while added < 1000 or engine.has_unfinished():
        for _ in range(min(rng.randint(0, 12), 1000 - added)):
            prompt = [rng.randrange(3, 259) for _ in range(rng.randint(1, 24))]
            params = SamplingParams(max_tokens=rng.randint(1, 12), temperature=rng.choice([0.0, 0.8]), seed=added)
            live.append(engine.add_request(prompt, rng.choice(names), params))
            added += 1
        for request_id in rng.sample(live, k=min(len(live), rng.randint(0, 2))):
            aborted += engine.abort(request_id)
            live.remove(request_id)
        for out in engine.step():
            if out.finished:
                finished += 1
                live.remove(out.request_id)
                assert 1 <= len(out.token_ids) <= 12
    assert finished + aborted == 1000 and aborted > 50
    assert engine.num_preemptions > 0, "the cache was sized to force preemption"
    assert_everything_freed(engine)


def test_seeded_sampling_ignores_batch_composition(demo):
    engine = make_engine(demo)
    params = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    alone = engine.generate(["Hello, world!"], ["adapter-3"], params)[0].token_ids
    crowd = engine.generate(["Hello, world!", "noise", "more noise"], ["adapter-3", None, "adapter-1"], params)
    assert crowd[0].token_ids == alone


def test_top_k_one_is_greedy(demo):
    engine = make_engine(demo)
    greedy = engine.generate(["abc"], ["adapter-0"], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    top1 = engine.generate(["abc"], ["adapter-0"], SamplingParams(max_tokens=6, temperature=1.5, top_k=1, seed=3, ignore_eos=True))[0]
    assert top1.token_ids == greedy.token_ids


def test_stop_string_truncates_text_and_finishes(demo):
    engine = make_engine(demo)
    full = engine.generate(["Hello"], [None], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    stop = full.text[3:5]
    assert stop, "the demo model generates some text"
    out = engine.generate(["Hello"], [None], SamplingParams(max_tokens=12, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and stop not in out.text and full.text.startswith(out.text)


def test_incremental_outputs_add_up_to_the_final_one(demo):
    engine = make_engine(demo)
    request_id = engine.add_request("stream me", "adapter-5", SamplingParams(max_tokens=7, ignore_eos=True))
    pieces, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == request_id
            pieces += out.new_token_ids
            last = out
    assert last.finished and last.finish_reason == "length" and pieces == last.token_ids and len(pieces) == 7
    assert last.times.arrival <= last.times.first_token <= last.times.finish


def test_unload_is_refused_while_waiting_requests_use_the_adapter(demo):
    engine = make_engine(demo, max_num_seqs=1)
    ids = [engine.add_request("first", "adapter-1"), engine.add_request("queued", "adapter-2")]
    engine.step()  # adapter-2's request is still waiting: it holds no slot pin, but it needs the adapter
    with pytest.raises(AdapterInUseError, match="unfinished requests"):
        engine.unload_adapter("adapter-2")
    finished = {o.request_id for _ in range(200) if engine.has_unfinished() for o in engine.step() if o.finished}
    assert finished == set(ids)
    engine.unload_adapter("adapter-2")
    assert "adapter-2" not in engine.adapters()


def test_tiny_temperature_is_greedy_and_cannot_wedge_the_engine(demo):
    engine = make_engine(demo)
    greedy = engine.generate(["abc"], ["adapter-0"], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    tiny = engine.generate(["abc"], ["adapter-0"], SamplingParams(max_tokens=5, temperature=1e-40, ignore_eos=True))[0]
    assert tiny.token_ids == greedy.token_ids


def test_manual_hot_adapter_stands_until_the_policy_moves(demo):
    engine = make_engine(demo, auto_hot=True)
    engine.set_hot_adapter("adapter-3")
    engine.generate(["x"], [None], SamplingParams(max_tokens=3))  # too few requests for the policy to choose
    assert engine.hot_adapter == "adapter-3"


def test_bad_engine_settings_are_refused(demo):
    with pytest.raises(ValueError, match="max_adapter_slots >= 2"):
        make_engine(demo, max_adapter_slots=1)
    with pytest.raises(ValueError, match="max_lora_rank"):
        make_engine(demo, max_lora_rank=256)
    engine = make_engine(demo)
    with pytest.raises(RequestError, match="2 prompts but 1 adapters"):
        engine.generate(["a", "b"], ["adapter-0"])
    with pytest.raises(RequestError, match="seed"):
        SamplingParams(seed=2**70)


def test_step_totals_count_the_steps_and_which_were_decode_only(demo):
    engine = make_engine(demo)
    before = dict(engine.stats()["step_totals"])
    engine.generate(["one prompt", "another"], [None, "adapter-1"], SamplingParams(max_tokens=5, ignore_eos=True))
    after = engine.stats()["step_totals"]
    # One prefill step for both prompts (it samples their first tokens), then 4 decode steps of 2 tokens each.
    assert after["steps"] - before["steps"] == 5
    assert after["decode_only_steps"] - before["decode_only_steps"] == 4
    prompt_tokens = sum(len(engine.tokenizer.encode(p)) for p in ["one prompt", "another"])
    assert after["tokens"] - before["tokens"] == prompt_tokens + 4 * 2
    assert after["seconds"] > before["seconds"]
    adapter_tokens = len(engine.tokenizer.encode("another")) + 4  # no hot adapter: every adapter token is corrected
    assert after["corrected_tokens"] - before["corrected_tokens"] == adapter_tokens
