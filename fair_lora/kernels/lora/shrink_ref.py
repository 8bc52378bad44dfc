"""Pure-torch reference of the shrink: v[e, j·R : j·R + r] = x[t_e] · A_j[s_e, :r]ᵀ for every sub-projection j
(float32 accumulate)."""
import torch

from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.slots import LoRASlots


def lora_shrink_ref(x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> torch.Tensor:
    """x: [T, H_in]; slots.a: [S, n·R, H_in]. Returns v: [E, n·R] float32; columns past a rank are zero."""
    v = torch.zeros(batch.num_entries, slots.a.shape[1], dtype=torch.float32, device=x.device)
    width = slots.rank_width
    for j, ranks in enumerate(slots.ranks_host):
        for g, slot in enumerate(batch.seg_slot_host):
            r = ranks[slot]
            lo, hi = batch.seg_start_host[g], batch.seg_start_host[g + 1]
            if r == 0 or lo == hi:
                continue
            xs = x[batch.token_idx[lo:hi]].float()
            v[lo:hi, j * width : j * width + r] = xs @ slots.a[slot, j * width : j * width + r].float().t()
    return v
