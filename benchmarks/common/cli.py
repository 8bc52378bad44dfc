"""Command-line value types the benchmarks share: comma lists of numbers or of allowed names."""
import argparse
from collections.abc import Callable


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(x.strip() for x in text.split(","))
        if bad := [n for n in chosen if n not in allowed]:
            raise argparse.ArgumentTypeError(f"{bad} not in {allowed}")
        return chosen

    return parse
