"""Every request's greedy tokens and logprobs equal transformers + peft for that request alone, whatever the
hot adapter, the batch mix, the phase (prefill or decode) and the moment of a hot switch."""
import pytest

from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix, run_switching

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def engine(demo):
    return make_engine(demo)


def run_all(engine, requests, max_tokens=MAX_TOKENS):
    prompts, adapters = zip(*requests)
    return engine.generate(list(prompts), list(adapters), greedy(max_tokens))


@pytest.mark.parametrize("hot", [None, "adapter-0", "adapter-1", "adapter-2", "adapter-3"])
def test_mixed_batch_matches_peft_with_any_hot_adapter(engine, demo, oracle, hot):
    engine.set_hot_adapter(hot)
    try:
        outputs = run_all(engine, request_mix(demo, repeat=2))
    finally:
        engine.set_hot_adapter(None)
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)


def test_slora_mode_matches_peft(demo, oracle):
    engine = make_engine(demo, mode="slora")
    assert_matches_oracle(engine, oracle, run_all(engine, request_mix(demo)), MAX_TOKENS)


def test_hot_switch_mid_generation_keeps_every_output(engine, demo, oracle):
    schedule = ["adapter-2", "adapter-0", None, "adapter-4", "adapter-1", "adapter-5", None]
    outputs = run_switching(engine, request_mix(demo), schedule, MAX_TOKENS)
    assert engine.hot_adapter is None
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)


def test_new_prompts_prefill_while_others_decode(engine, demo, oracle):
    engine.set_hot_adapter("adapter-0")
    requests, ids, final = request_mix(demo, repeat=2), [], {}
    try:
        for prompt, adapter in requests:  # one new request per step: each prefill shares a batch with decodes
            ids.append(engine.add_request(prompt, adapter, greedy(MAX_TOKENS)))
            final.update((o.request_id, o) for o in engine.step() if o.finished)
        while engine.has_unfinished():
            final.update((o.request_id, o) for o in engine.step() if o.finished)
    finally:
        engine.set_hot_adapter(None)
    assert_matches_oracle(engine, oracle, [final[i] for i in ids], MAX_TOKENS)


def test_chunked_prefill_and_preemption_keep_outputs(demo, oracle):
    # A 6-token budget splits prompts into chunks; 24 blocks of 4 tokens cannot hold every sequence at once.
    engine = make_engine(demo, max_num_batched_tokens=6, block_size=4, num_kv_blocks=24, max_model_len=80)
    engine.set_hot_adapter("adapter-3")
    outputs = run_all(engine, request_mix(demo))
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)
    assert engine.num_preemptions > 0
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_engine_picks_hot_adapter_from_its_own_window(demo, oracle):
    engine = make_engine(demo, auto_hot=True)
    requests = [("Hot prompt number %d" % i, "adapter-2") for i in range(12)] + request_mix(demo)
    outputs = run_all(engine, requests, max_tokens=4)
    assert engine.hot_adapter == "adapter-2"
    assert_matches_oracle(engine, oracle, outputs, 4)
