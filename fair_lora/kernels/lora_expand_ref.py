"""Pure-torch reference of the expand: y[t_e] += c_e · v[e, :r_s] · B[s_e, :, :r_s]ᵀ (float32 accumulate)."""
import torch

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_slots import LoRASlots


def lora_expand_ref(y: torch.Tensor, v: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, H_out], updated in place; v: [E, R] float32 from the shrink; slots.b_t: [S, R, H_out]."""
    delta = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    for g, slot in enumerate(batch.seg_slot_host):
        r = slots.ranks_host[slot]
        lo, hi = batch.seg_start_host[g], batch.seg_start_host[g + 1]
        if r == 0 or lo == hi:
            continue
        vs = v[lo:hi, :r] * batch.scale[lo:hi, None]
        delta.index_add_(0, batch.token_idx[lo:hi], vs @ slots.b_t[slot, :r].float())
    y += delta.to(y.dtype)
