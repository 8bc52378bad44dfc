"""The public correction op that layers call; it picks Triton on CUDA and the torch reference elsewhere.

FAIR_LORA_TRITON=1 forces the Triton kernels for CPU tensors too (with TRITON_INTERPRET=1), which is how the
CPU tests exercise this dispatch.

Batches of few entries (decode steps with few cold tokens: at most FUSED_MAX_ENTRIES, in tiles of DECODE_TILE)
can take the fused kernel (`fused.py`: shrink and expand in one launch) instead of the shrink and the expand;
`FUSED_DECODE` (FAIR_LORA_FUSED_CORRECTION=1) turns it on. It trades two dependent launches (and v's zeroing)
for recomputing v once per work item, which grows with the tiles: so only few entries. In a CUDA graph the
entries are the graph's entry bucket, so each graph is captured with one form. Off until a GPU run shows
where it pays.

`linear_with_correction` is the projection: the base GEMM, then the correction into its output. (The shrink
on a second stream beside the base GEMM, as vLLM and SGLang overlap LoRA with the base projection, was measured
and made decode slower here: docs/benchmarks-history.md.)
"""
import os

import torch
import torch.nn.functional as F

from fair_lora.kernels.dispatch import use_triton
from fair_lora.kernels.lora.batch import DECODE_TILE, LoRABatch
from fair_lora.kernels.lora.expand_ref import lora_expand_ref
from fair_lora.kernels.lora.shrink_ref import lora_shrink_ref
from fair_lora.kernels.lora.slots import LoRASlots

FUSED_DECODE = os.environ.get("FAIR_LORA_FUSED_CORRECTION") == "1"
FUSED_MAX_ENTRIES = int(os.environ.get("FAIR_LORA_FUSED_MAX_ENTRIES", "32"))


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
        if FUSED_DECODE and batch.tile_entries == DECODE_TILE and batch.num_entries <= FUSED_MAX_ENTRIES:
            from fair_lora.kernels.lora.fused import lora_fused

            lora_fused(y, x, slots, batch)
            return
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
