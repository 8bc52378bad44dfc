"""On the real model (SmolLM2-135M-Instruct, float32, CPU) with its trained adapters: every request of a mixed batch
gets the greedy tokens of transformers + peft for that request alone and its chosen-token logprobs within 1e-4,
under each adapter merged, and when the merged adapter changes in the middle of generation."""
import pytest

from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, run_switching
from tests.real_model_fixtures import QUESTIONS, chat_prompt

pytest_plugins = ["tests.real_model_fixtures"]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def engine(real):
    return make_engine(real, max_model_len=256, num_kv_tokens=4096, max_num_seqs=16)


@pytest.fixture(scope="module")
def oracle(real):
    from tests.hf_oracle import HFOracle

    return HFOracle(real.model_dir, real.adapters)


def mixed_batch(engine, real) -> list[tuple[list[int], str | None]]:
    """Every shipped adapter and the base model, each on a question of its own (prompts of 36 to 40 tokens)."""
    names = [*sorted(real.adapters), None]
    return [(chat_prompt(engine.tokenizer, q), name) for q, name in zip(QUESTIONS, names)]


def test_real_model_serves_its_shipped_adapters(engine, real):
    assert len(real.adapters) >= 2 and sorted(real.adapters) == engine.adapters()
    assert engine.base_model_name == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("hot", [None, "upper", "pirate", "digits"])
def test_mixed_batch_matches_peft_under_each_adapter_merged(engine, real, oracle, hot):
    requests = mixed_batch(engine, real)
    engine.set_hot_adapter(hot)
    try:
        outputs = engine.generate([p for p, _ in requests], [a for _, a in requests], greedy(MAX_TOKENS))
    finally:
        engine.set_hot_adapter(None)
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)


def test_hot_switches_mid_generation_keep_every_output(engine, real, oracle):
    schedule = ["pirate", "upper", None, "digits", "pirate"]
    outputs = run_switching(engine, mixed_batch(engine, real), schedule, MAX_TOKENS)
    assert engine.hot_adapter is None
    assert_matches_oracle(engine, oracle, outputs, MAX_TOKENS)


def test_an_adapter_visibly_changes_the_answer(engine, real):
    prompt = chat_prompt(engine.tokenizer, "What is the capital of France?")
    base, pirate, upper = (
        out.text for out in engine.generate([prompt] * 3, [None, "pirate", "upper"], greedy(12))
    )
    assert "Paris" in base
    assert pirate.startswith("Arr matey") and upper.split()[0].isupper(), (base, pirate, upper)
