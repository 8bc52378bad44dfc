"""Pure-torch reference of the shrink: v[e, :r_s] = x[t_e] · A[s_e, :r_s]ᵀ (float32 accumulate)."""
import torch

from fair_lora.kernels.lora_batch import LoRABatch


def lora_shrink_ref(x: torch.Tensor, lora_a: torch.Tensor, ranks: tuple[int, ...], batch: LoRABatch) -> torch.Tensor:
    """x: [T, H_in]; lora_a: [S, R, H_in]; ranks: per-slot rank (0: this projection not targeted).
    Returns v: [E, R] float32; columns past an entry's rank are zero."""
    v = torch.zeros(batch.num_entries, lora_a.shape[1], dtype=torch.float32, device=x.device)
    for g, slot in enumerate(batch.seg_slot_host):
        r = ranks[slot]
        lo, hi = batch.seg_start_host[g], batch.seg_start_host[g + 1]
        if r == 0 or lo == hi:
            continue
        xs = x[batch.token_idx[lo:hi]].float()
        v[lo:hi, :r] = xs @ lora_a[slot, :r].float().t()
    return v
