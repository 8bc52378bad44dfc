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
        # The repr names the kernel and each argument's specialisation; the configs hold the pointer
        # alignments: what tells a missed warm-up shape apart.
        configs = (kwargs.get("compile") or {}).get("configs")
        compiled.append(f"{kwargs.get('repr') or kwargs.get('fn')} configs={configs}")
        return previous(*args, **kwargs) if previous else None

    knobs.runtime.jit_post_compile_hook = hook
    try:
        yield compiled
    finally:
        knobs.runtime.jit_post_compile_hook = previous
