"""Which adapter each sequence of a decode batch uses, and the adapter sets the benchmark loads.

Mixes: `all-hot` (every sequence uses adapter 0), `all-distinct` (sequence i uses adapter i mod N) and
S-LoRA's power law `alpha=<a>`: adapter floor(N·power(a)), seed 42 (alpha = 1 is uniform, smaller is more
skewed; the top adapter's share is about (1/N)^alpha)."""
from collections import Counter
from dataclasses import dataclass

import numpy as np

ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SEED = 42


@dataclass(frozen=True)
class Mix:
    name: str  # "all-hot", "all-distinct" or "alpha=<a>"
    alpha: float | None = None  # the power-law exponent; None for the two fixed mixes

    def adapters(self, batch: int, num_adapters: int) -> list[int]:
        """The adapter index of each of `batch` sequences."""
        if self.name == "all-hot":
            return [0] * batch
        if self.name == "all-distinct":
            return [i % num_adapters for i in range(batch)]
        draws = np.random.RandomState(SEED).power(self.alpha, batch)
        return np.minimum(np.floor(num_adapters * draws), num_adapters - 1).astype(int).tolist()


ALL_MIXES = (Mix("all-hot"), *(Mix(f"alpha={a:g}", a) for a in ALPHAS), Mix("all-distinct"))


def parse_mixes(text: str) -> tuple[Mix, ...]:
    """'all-hot,0.1,alpha=1,all-distinct' -> those mixes; 'all' -> every mix."""
    if text == "all":
        return ALL_MIXES
    return tuple(_parse_mix(part.strip()) for part in text.split(","))


def _parse_mix(text: str) -> Mix:
    if text in ("all-hot", "all-distinct"):
        return Mix(text)
    alpha = float(text.removeprefix("alpha="))
    if alpha <= 0:
        raise ValueError(f"a power-law mix needs alpha > 0, got {text!r}")
    return Mix(f"alpha={alpha:g}", alpha)


def most_frequent(adapters: list[int]) -> tuple[int, float]:
    """The most frequent adapter of a batch (ties: the lowest index) and its share of the batch."""
    counts = Counter(adapters)
    top = min(counts, key=lambda a: (-counts[a], a))
    return top, counts[top] / len(adapters)


@dataclass(frozen=True)
class AdapterSet:
    name: str  # "r16" or "r8-64"
    ranks: tuple[int, ...]  # adapter i has rank ranks[i]


def uniform_set(num_adapters: int, rank: int) -> AdapterSet:
    return AdapterSet(f"r{rank}", (rank,) * num_adapters)


def mixed_set(num_adapters: int, choices: tuple[int, ...]) -> AdapterSet:
    ranks = np.random.RandomState(SEED).choice(choices, num_adapters)
    return AdapterSet(f"r{min(choices)}-{max(choices)}", tuple(int(r) for r in ranks))
