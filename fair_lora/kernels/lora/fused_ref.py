"""Pure-torch reference of the fused correction: the shrink's reference, then the expand's (float32 accumulate)."""
import torch

from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.expand_ref import lora_expand_ref
from fair_lora.kernels.lora.shrink_ref import lora_shrink_ref
from fair_lora.kernels.lora.slots import LoRASlots


def lora_fused_ref(y: torch.Tensor, x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y[t_e, cols_j] += c_e · (x[t_e] · A_j[s_e]ᵀ) · B_j[s_e]ᵀ for every entry e and sub-projection j, in place."""
    lora_expand_ref(y, lora_shrink_ref(x, slots, batch), slots, batch)
