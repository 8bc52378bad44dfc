"""Per-request sampling settings, validated on construction (vLLM's names and meanings)."""
import math
import reprlib
from dataclasses import dataclass, field

from fair_lora.errors import RequestError

# Bounds on what a request may ask for. Out of them a value would crash a step (top_k beyond int64 overflows the
# sampler's tensor) or cost work for nothing; inside them the engine's own checks (the context length) apply.
MAX_INT = 2**31 - 1  # max_tokens and top_k: no context and no vocabulary comes near it
MAX_SEED = 2**63 - 1  # an int64, the range seeds always had here
MAX_STOP_STRINGS = 16  # each is searched for after every token
MAX_STOP_CHARS = 256


def _int_in(x: object, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x <= high


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 means no top-k cut
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False  # return the log-probability of each chosen token

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.top_k == -1:
            self.top_k = 0
        stop = self.stop
        checks = (
            ("max_tokens", _int_in(self.max_tokens, 1, MAX_INT), f"an integer in [1, {MAX_INT}]"),
            ("temperature", _is_number(self.temperature) and self.temperature >= 0, "a finite number >= 0 (0: greedy)"),
            ("top_p", _is_number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("top_k", _int_in(self.top_k, 0, MAX_INT), f"an integer in [-1, {MAX_INT}] (0 or -1: no cut)"),
            ("seed", self.seed is None or _int_in(self.seed, 0, MAX_SEED), f"None or an integer in [0, {MAX_SEED}]"),
            (
                "stop",
                isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS
                and all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stop),
                f"a list of at most {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters",
            ),
            ("ignore_eos", isinstance(self.ignore_eos, bool), "True or False"),
            ("logprobs", isinstance(self.logprobs, bool), "True or False"),
        )
        for name, ok, rule in checks:
            if not ok:  # reprlib: a hostile value (a huge stop list) must not become a huge message
                raise RequestError(f"{name} must be {rule}; got {reprlib.repr(getattr(self, name))}")

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows; vLLM draws the same line.
        return self.temperature < 1e-5
