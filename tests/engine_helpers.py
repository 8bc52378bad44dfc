"""Shared pieces of the engine tests: a request mix, an engine factory, a run through hot-adapter switches, the
comparison with the oracle, and the end state of an engine that has finished everything."""
from fair_lora import EngineConfig, LLMEngine, RequestOutput, SamplingParams

PROMPTS = [
    "Hello, world!",
    "The quick brown fox",
    "a",
    "Serving many LoRA adapters on one base model is fun.",
    "0123456789",
    "¿Qué tal? 🙂",
    "short",
    "Merged weights, corrected tokens, one batch.",
]


def make_engine(demo, **overrides) -> LLMEngine:
    settings = dict(model=str(demo.model_dir), adapters={n: str(p) for n, p in demo.adapters.items()}, auto_hot=False)
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def request_mix(demo, repeat: int = 1) -> list[tuple[str, str | None]]:
    """Every adapter (mixed ranks, partial targets, rsLoRA) and the base model, each on a different prompt."""
    names: list[str | None] = [*demo.adapters, None]
    return [(PROMPTS[i % len(PROMPTS)], names[i % len(names)]) for i in range(len(names) * repeat)]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, logprobs=True)


def assert_matches_oracle(engine: LLMEngine, oracle, outputs: list[RequestOutput], max_tokens: int) -> None:
    for out in outputs:
        tokens, logprobs = oracle.greedy(out.prompt_token_ids, out.adapter, max_tokens)
        assert out.token_ids == tokens, f"{out.request_id} ({out.adapter}): tokens differ from transformers + peft"
        assert len(out.logprobs) == len(logprobs)
        worst = max(abs(a - b) for a, b in zip(out.logprobs, logprobs))
        assert worst < 1e-4, f"{out.request_id} ({out.adapter}): logprob off by {worst}"


def run_switching(
    engine: LLMEngine, requests: list, schedule: list[str | None], max_tokens: int
) -> list[RequestOutput]:
    """Every request added at once, then after each step the hot adapter set to the next of `schedule` (None once
    it runs out); the finished outputs in the requests' order."""
    ids = [engine.add_request(p, a, greedy(max_tokens)) for p, a in requests]
    switches, final = iter(schedule), {}
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
        engine.set_hot_adapter(next(switches, None))
    return [final[i] for i in ids]


def assert_everything_freed(engine: LLMEngine) -> None:
    """After every request finished or was aborted: each KV block free once, no pin but the merged adapter's."""
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert sorted(engine.blocks.free_blocks) == list(range(engine.blocks.num_blocks)), "no block freed twice"
    assert set(engine.pool.pins) <= {engine.hot_adapter}, "only the merged adapter may stay pinned"
    assert not engine.sequences
