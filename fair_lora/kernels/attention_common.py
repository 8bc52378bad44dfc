"""What the two attention kernels share: interpreter-safe reductions."""
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

