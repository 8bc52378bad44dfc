"""What the two attention kernels share: interpreter-safe reductions and the dtype policy of their dots."""
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # softmax runs in base 2 (exp2), with the scale folded into q·k


@triton.jit
def reduce_max(x, AXIS: tl.constexpr):
    # tl.max and tl.sum are @triton.jit wrappers, compiled-only when triton was imported before TRITON_INTERPRET
    # was set (as in the test session); tl.reduce is a builtin and runs in the interpreter either way.
    return tl.reduce(x, AXIS, tl.standard._elementwise_max)


@triton.jit
def reduce_sum(x, AXIS: tl.constexpr):
    return tl.reduce(x, AXIS, tl.standard._sum_combine)


def upcast(dtype: torch.dtype) -> bool:
    """16-bit operands go to tl.dot as they are (float32 accumulate), except bf16 in Triton's CPU interpreter,
    which multiplies bf16 operands as raw integers (fp16 it gets right, so fp16 tests cover the GPU path)."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def precision(dtype: torch.dtype) -> str:
    """float32 models are the fidelity reference: exact products, no tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"
