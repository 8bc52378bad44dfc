"""Shared pieces of the engine tests: a request mix, an engine factory, and the comparison with the oracle."""
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
