"""Pure-torch reference of the expand: y[t_e, cols_j] += c_e · v[e, j·R : j·R + r] · B_j[s_e, :, :r]ᵀ for every
sub-projection j (float32 accumulate)."""
import torch

from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.slots import LoRASlots


def lora_expand_ref(y: torch.Tensor, v: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, ΣH_out], updated in place; v: [E, n·R] float32 from the shrink; slots.b_t: [S, R, ΣH_out]."""
    delta = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    width, offsets = slots.rank_width, slots.out_offsets
    for j, ranks in enumerate(slots.ranks_host):
        cols = slice(offsets[j], offsets[j + 1])
        for g, slot in enumerate(batch.seg_slot_host):
            r = ranks[slot]
            lo, hi = batch.seg_start_host[g], batch.seg_start_host[g + 1]
            if r == 0 or lo == hi:
                continue
            vs = v[lo:hi, j * width : j * width + r] * batch.scale[lo:hi, None]
            delta[:, cols].index_add_(0, batch.token_idx[lo:hi], vs @ slots.b_t[slot, :r, cols].float())
    y += delta.to(y.dtype)
