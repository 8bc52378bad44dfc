"""Which low-rank corrections each token of a batch gets; built once per forward, shared by every layer.

With hot adapter h merged into the base weights (DESIGN.md, "The idea in one formula"):
  a token of h gets no entry; a token of adapter i != h gets (i, +s_i) and (h, -s_h);
  a base-model token gets (h, -s_h). With no hot adapter a token of i gets (i, +s_i).
Entries are sorted by slot, so each segment reads one adapter's weights (SGMV-style). Inside the hot
segment the base-model tokens' entries come first.

The Triton kernels walk tiles: runs of at most `tile_entries` consecutive entries of one segment. The shrink
covers every entry. The expand writes each token's output row once, summing both of its entries there: its
tiles cover the own-adapter segments and the base-model prefix of the hot segment, and each own entry
brings its token's hot entry along through `pair`. So no two programs ever write the same row.
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
    max_seg_len: int  # longest segment
    hot_slot: int | None  # the slot merged into the base weights
    hot_slot_t: torch.Tensor  # [1] int32 on the device, the same (0 when none), read by the expand kernel
    pair: torch.Tensor  # [E] int32, for an own-adapter entry: its token's hot-subtraction entry; else -1
    tile_entries: int  # the most entries in one tile
    shrink_tiles: torch.Tensor  # [N_s, 3] int32 (first entry, end entry, slot); every entry in exactly one
    expand_tiles: torch.Tensor  # [N_x, 3] int32, the same for the entries that own an output row

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
    num_base = int((token_slots < 0).sum())
    if hot_slot is not None:
        minus_hot = torch.cat([rows[token_slots < 0], rows[own]])  # base-model tokens first: the expand's tiles
        parts_idx.append(minus_hot)
        parts_slot.append(torch.full((len(minus_hot),), hot_slot, dtype=torch.int64))
        parts_scale.append(torch.full((len(minus_hot),), -float(slot_scales[hot_slot])))
    idx, slot, scale = torch.cat(parts_idx), torch.cat(parts_slot), torch.cat(parts_scale).float()
    order = torch.sort(slot, stable=True).indices
    idx, slot, scale = idx[order], slot[order], scale[order]
    seg_slot, counts = torch.unique_consecutive(slot, return_counts=True)
    seg_start = torch.zeros(len(counts) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=seg_start[1:])
    tile_entries = 16 if len(token_slots) <= 512 else 32  # decode segments are short; prefill's reuse more A/B
    expand_ends = seg_start[1:].clone()  # the expand owns the non-hot segments and the hot one's base prefix
    if hot_slot is not None:
        expand_ends[seg_slot == hot_slot] = seg_start[:-1][seg_slot == hot_slot] + num_base
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
        hot_slot=hot_slot,
        hot_slot_t=torch.tensor([hot_slot or 0], dtype=torch.int32, device=device),
        pair=_hot_pairs(idx, slot, len(token_slots), hot_slot).to(device=device, dtype=torch.int32),
        tile_entries=tile_entries,
        shrink_tiles=_tiles(seg_start[:-1], seg_start[1:], seg_slot, tile_entries).to(device),
        expand_tiles=_tiles(seg_start[:-1], expand_ends, seg_slot, tile_entries).to(device),
    )


def _hot_pairs(idx: torch.Tensor, slot: torch.Tensor, num_tokens: int, hot_slot: int | None) -> torch.Tensor:
    """[E]: for each entry of a token's own adapter, the position of the same token's hot entry; else -1."""
    pair = torch.full((len(idx),), -1, dtype=torch.int64)
    if hot_slot is None:
        return pair
    is_hot = slot == hot_slot
    hot_entry_of_token = torch.full((num_tokens,), -1, dtype=torch.int64)
    hot_entry_of_token[idx[is_hot]] = torch.nonzero(is_hot).flatten()
    pair[~is_hot] = hot_entry_of_token[idx[~is_hot]]
    return pair


def _tiles(starts: torch.Tensor, ends: torch.Tensor, slots: torch.Tensor, size: int) -> torch.Tensor:
    """Cut each run starts[g]:ends[g] into tiles of at most `size` entries: [N, 3] int32 (first, end, slot)."""
    lengths = (ends - starts).clamp(min=0)
    per_run = (lengths + size - 1) // size
    run = torch.repeat_interleave(torch.arange(len(starts)), per_run)
    first_tile = torch.cumsum(per_run, 0) - per_run
    first = starts[run] + (torch.arange(len(run)) - first_tile[run]) * size
    end = torch.minimum(first + size, ends[run])
    return torch.stack([first, end, slots[run]], dim=1).to(torch.int32)
