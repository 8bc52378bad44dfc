"""Per-request sampling settings, validated on construction (vLLM's names and meanings)."""
import math
from dataclasses import dataclass, field

from fair_lora.errors import RequestError


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
        numbers = (self.temperature, self.top_p)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers) or not isinstance(
            self.stop, list
        ):
            raise RequestError(f"temperature and top_p must be numbers and stop a list of strings; got {self}")
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (self.temperature >= 0.0 and math.isfinite(self.temperature), "temperature must be finite and >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63), "seed must be in [0, 2**63)"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (or -1 for none)"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise RequestError(f"{message}; got {self}")

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows; vLLM draws the same line.
        return self.temperature < 1e-5
