"""Pure-torch reference of the shrink: v[e, :r_s] = x[t_e] · A[s_e, :r_s]ᵀ (float32 accumulate)."""
import torch

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_slots import LoRASlots


def lora_shrink_ref(x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> torch.Tensor:
    """x: [T, H_in]; slots.a: [S, R, H_in]. Returns v: [E, R] float32; columns past an entry's rank are zero."""
    v = torch.zeros(batch.num_entries, slots.a.shape[1], dtype=torch.float32, device=x.device)
    for g, slot in enumerate(batch.seg_slot_host):
        r = slots.ranks_host[slot]
        lo, hi = batch.seg_start_host[g], batch.seg_start_host[g + 1]
        if r == 0 or lo == hi:
            continue
        xs = x[batch.token_idx[lo:hi]].float()
        v[lo:hi, :r] = xs @ slots.a[slot, :r].float().t()
    return v
