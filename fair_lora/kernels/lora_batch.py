"""Which low-rank corrections each token of a batch gets; built once per forward, shared by every layer.

With hot adapter h merged into the base weights (DESIGN.md, "The idea in one formula"):
  a token of h gets no entry; a token of adapter i != h gets (i, +s_i) and (h, -s_h);
  a base-model token gets (h, -s_h). With no hot adapter a token of i gets (i, +s_i).
Entries are sorted by slot, so each segment reads one adapter's weights (SGMV-style).
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRABatch:
    num_tokens: int
    token_idx: torch.Tensor  # [E] int64, token row of each entry; entries sorted by slot
    scale: torch.Tensor  # [E] float32, signed scaling of each entry: +s_i own adapter, -s_h hot subtraction
    entry_slot: torch.Tensor  # [E] int32, pool slot of each entry
    seg_start: torch.Tensor  # [G+1] int32, entries seg_start[g]:seg_start[g+1] all use slot seg_slot[g]
    seg_slot: torch.Tensor  # [G] int32
    seg_start_host: tuple[int, ...]  # host copies of seg_start / seg_slot: loop bounds without a device sync
    seg_slot_host: tuple[int, ...]
    max_seg_len: int  # longest segment, sizes the kernels' grids

    @property
    def num_entries(self) -> int:
        return len(self.token_idx)

    @property
    def empty(self) -> bool:
        return self.num_entries == 0


def build_lora_batch(
    token_slots: torch.Tensor, slot_scales: torch.Tensor, hot_slot: int | None, device: torch.device | str
) -> LoRABatch:
    """token_slots: [T] int, each token's adapter slot, -1 for the base model (host tensor).
    slot_scales: [S] float32, each slot's scaling (lora_alpha / r, or / sqrt(r) with rsLoRA) (host tensor).
    hot_slot: the slot merged into the base weights, or None."""
    token_slots = token_slots.to(torch.int64)
    rows = torch.arange(len(token_slots))
    own = (token_slots >= 0) if hot_slot is None else (token_slots >= 0) & (token_slots != hot_slot)
    parts_idx, parts_slot, parts_scale = [rows[own]], [token_slots[own]], [slot_scales[token_slots[own]]]
    if hot_slot is not None:
        minus_hot = token_slots != hot_slot
        n = int(minus_hot.sum())
        parts_idx.append(rows[minus_hot])
        parts_slot.append(torch.full((n,), hot_slot, dtype=torch.int64))
        parts_scale.append(torch.full((n,), -float(slot_scales[hot_slot])))
    idx, slot, scale = torch.cat(parts_idx), torch.cat(parts_slot), torch.cat(parts_scale).float()
    order = torch.sort(slot, stable=True).indices
    idx, slot, scale = idx[order], slot[order], scale[order]
    seg_slot, counts = torch.unique_consecutive(slot, return_counts=True)
    seg_start = torch.zeros(len(counts) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=seg_start[1:])
    return LoRABatch(
        num_tokens=len(token_slots),
        token_idx=idx.to(device),
        scale=scale.to(device),
        entry_slot=slot.to(device=device, dtype=torch.int32),
        seg_start=seg_start.to(device=device, dtype=torch.int32),
        seg_slot=seg_slot.to(device=device, dtype=torch.int32),
        seg_start_host=tuple(seg_start.tolist()),
        seg_slot_host=tuple(seg_slot.tolist()),
        max_seg_len=int(counts.max()) if len(counts) else 0,
    )
