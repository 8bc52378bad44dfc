"""The kernels' one dtype policy for tl.dot: which input precision, and when operands must be upcast first.

float32 models are the fidelity reference, so their dots take exact products ("ieee"). 16-bit models take tf32,
which holds bf16/fp16 values exactly: the LoRA kernels (shrink, expand, merge) upcast their operands to float32
and lose nothing; the attention kernels give tl.dot 16-bit operands as they are (float32 accumulate)."""
import os

import torch


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision in a kernel over a model of `dtype`."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether 16-bit operands must reach tl.dot as float32: only bf16 in Triton's CPU interpreter, which multiplies
    bf16 operands as raw integers (fp16 it gets right, so fp16 tests cover the GPU path)."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
