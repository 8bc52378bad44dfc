"""Start-up work caught inside serving: Triton kernels compiled and CUDA graphs captured while requests run.

Triton calls `knobs.runtime.jit_post_compile_hook` (triton >= 3.4; `JITFunction.compiled_hook` before) each time
a JIT function gets a new compiled variant in this process, whether it was compiled or read from Triton's disk
cache: both stall the step that needs it. Compiled variants are per process, shared by every engine in it.
"""
from collections import Counter
from collections.abc import Callable

from fair_lora import LLMEngine


class CompileCounter:
    """Counts Triton compiles while installed (`with CompileCounter() as c: ... c.count`); `hook` names the hook
    used, None when the installed Triton has none (or no Triton): then `count` is None."""

    def __init__(self) -> None:
        self.count: int | None = None
        self.hook: str | None = None
        self.kernels: Counter[str] = Counter()  # compiles per JIT function name
        self._owner, self._attr, self._previous = None, "", None

    def __enter__(self) -> "CompileCounter":
        owner, attr, hook = _hook_site()
        if owner is None:
            return self
        self._owner, self._attr, self.hook, self.count = owner, attr, hook, 0
        self._previous = getattr(owner, attr)
        setattr(owner, attr, self._counting(self._previous))
        return self

    def __exit__(self, *exc) -> None:
        if self._owner is not None:
            setattr(self._owner, self._attr, self._previous)

    def _counting(self, previous: Callable | None) -> Callable:
        def hook(*args, **kwargs):
            self.count += 1
            self.kernels[getattr(kwargs.get("fn"), "name", None) or str(kwargs.get("repr", "?")).split("[")[0]] += 1
            return previous(*args, **kwargs) if previous else None

        return hook


def compile_hook_name() -> str | None:
    return _hook_site()[2]


def _hook_site() -> tuple[object | None, str, str | None]:
    try:
        import triton
    except ImportError:
        return None, "", None
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is not None and hasattr(runtime, "jit_post_compile_hook"):
        return runtime, "jit_post_compile_hook", "triton.knobs.runtime.jit_post_compile_hook"
    jit = getattr(getattr(triton, "runtime", None), "jit", None)
    function = getattr(jit, "JITFunction", None)
    if function is not None and hasattr(function, "compiled_hook"):
        return function, "compiled_hook", "triton.runtime.jit.JITFunction.compiled_hook"
    return None, "", None


def graphs_captured(engine: LLMEngine) -> int | None:
    """Decode graphs the engine holds (None: it runs without CUDA graphs)."""
    graphs = engine.runner.graphs
    return None if graphs is None else len(graphs.graphs)


def resident_adapters(engine: LLMEngine) -> int:
    return len(engine.stats()["resident_adapters"])
