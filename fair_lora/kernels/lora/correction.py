"""The public correction op that layers call; it picks Triton on CUDA and the torch reference elsewhere.

FAIR_LORA_TRITON=1 forces the Triton kernels for CPU tensors too (with TRITON_INTERPRET=1), which is how the
CPU tests exercise this dispatch.

`linear_with_correction` is the projection: the base GEMM, then the correction into its output. (The shrink
on a second stream beside the base GEMM, as vLLM and SGLang overlap LoRA with the base projection, was measured
and made decode slower here, and so was shrink and expand fused into one launch per group with v recomputed per
work item, 3-5x: docs/benchmarks-history.md.)
"""
import torch
import torch.nn.functional as F

from fair_lora.kernels.dispatch import use_triton
from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.expand_ref import lora_expand_ref
from fair_lora.kernels.lora.shrink_ref import lora_shrink_ref
from fair_lora.kernels.lora.slots import LoRASlots


def lora_correction(y: torch.Tensor, x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y[t_e] += c_e · (x[t_e] · A[s_e, :r]ᵀ) · B[s_e, :, :r]ᵀ for every entry e of `batch`.

    y: [T, H_out] (updated in place); x: [T, H_in]; slots: the projection's pooled adapters
    (A: [S, R, H_in], Bᵀ: [S, R, H_out], per-slot rank, 0 where the projection is not targeted).
    Tokens of the merged hot adapter have no entries, so they cost nothing here."""
    if batch.empty:
        return
    if use_triton(x):
        # Imported on first use: triton.jit reads TRITON_INTERPRET when the kernel module is imported, and a
        # CPU-only process never needs Triton at all.
        from fair_lora.kernels.lora.expand import lora_expand
        from fair_lora.kernels.lora.shrink import lora_shrink

        lora_expand(y, lora_shrink(x, slots, batch), slots, batch)
        return
    v = lora_shrink_ref(x, slots, batch)
    lora_expand_ref(y, v, slots, batch)


def linear_with_correction(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, slots: LoRASlots | None, batch: LoRABatch
) -> torch.Tensor:
    """y = x·Wᵀ (+ bias), then `lora_correction(y, x, slots, batch)` when the projection can be targeted."""
    y = F.linear(x, weight, bias)
    if slots is not None:
        lora_correction(y, x, slots, batch)
    return y
