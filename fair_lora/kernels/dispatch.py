"""Which implementation a public op runs: Triton on CUDA, the torch reference elsewhere."""
import os

import torch


def use_triton(x: torch.Tensor) -> bool:
    """FAIR_LORA_TRITON=1 forces Triton for CPU tensors too (with TRITON_INTERPRET=1): how CPU tests run it.
    Kernel modules are imported on first use, since triton.jit reads TRITON_INTERPRET at import and a CPU-only
    process never needs Triton at all."""
    return x.is_cuda or os.environ.get("FAIR_LORA_TRITON") == "1"
