"""The public correction op that layers call; it picks Triton on CUDA and the torch reference elsewhere."""
import torch

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_expand_ref import lora_expand_ref
from fair_lora.kernels.lora_shrink_ref import lora_shrink_ref


def lora_correction(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: tuple[int, ...],
    batch: LoRABatch,
) -> None:
    """y[t_e] += c_e · (x[t_e] · A[s_e, :r]ᵀ) · B[s_e, :, :r]ᵀ for every entry e of `batch`.

    y: [T, H_out] (updated in place); x: [T, H_in]; lora_a: [S, R, H_in]; lora_b: [S, H_out, R];
    ranks: [S] host ints, a slot's rank for this projection (0: not targeted). Hot tokens have no entries."""
    if batch.empty:
        return
    v = lora_shrink_ref(x, lora_a, ranks, batch)
    lora_expand_ref(y, v, lora_b, ranks, batch)
