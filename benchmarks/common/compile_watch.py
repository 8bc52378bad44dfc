"""Counts the Triton kernel variants compiled (or loaded from Triton's disk cache) while a block runs: after the
engine's warm-up, serving should add none."""
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def triton_compiles() -> Iterator[list[str] | None]:
    """Yields the list the names of newly compiled kernels are appended to; None when this Triton has no hook
    (then nothing is counted)."""
    try:
        from triton import knobs
    except ImportError:
        yield None
        return
    compiled: list[str] = []
    previous = knobs.runtime.jit_post_compile_hook

    def hook(*args, **kwargs):
        # What tells a missed warm-up shape apart: the argument types, the constexpr values and the
        # specialisations (alignment / divisibility) of the variant.
        info = kwargs.get("compile") or {}
        name = getattr(kwargs.get("fn"), "name", None) or str(kwargs.get("repr"))[:60]
        compiled.append(f"{name} signature={info.get('signature')} constants={info.get('constants')} "
                        f"configs={info.get('configs')}")
        return previous(*args, **kwargs) if previous else None

    knobs.runtime.jit_post_compile_hook = hook
    try:
        yield compiled
    finally:
        knobs.runtime.jit_post_compile_hook = previous
