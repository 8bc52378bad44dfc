"""Which low-rank corrections each token of a batch gets; built once per forward, shared by every layer.

With hot adapter h merged into the base weights (docs/design.md, "The idea in one formula"):
  a token of h gets no entry; a token of adapter i != h gets (i, +s_i) and (h, -s_h);
  a base-model token gets (h, -s_h). With no hot adapter a token of i gets (i, +s_i).
Entries are sorted by slot, so each segment reads one adapter's weights (SGMV-style). Inside the hot
segment the base-model tokens' entries come first.

The Triton kernels walk tiles: runs of at most `tile_entries` consecutive entries of one segment. The shrink
covers every entry. The expand writes each token's output row once, summing both of its entries there: its
tiles cover the own-adapter segments and the base-model prefix of the hot segment, and each own entry
brings its token's hot entry along through `hot_entry_of`. So no two programs ever write the same row.
"""
from dataclasses import dataclass

import numpy as np
import torch

from fair_lora.kernels.packed_fields import pack, unpack

DECODE_TILE = 16  # entries per tile in batches of up to 512 tokens (every decode step)


@dataclass(frozen=True)
class LoRABatch:
    num_tokens: int
    token_idx: torch.Tensor  # [E] int64, token row of each entry; entries sorted by slot
    scale: torch.Tensor  # [E] float32, signed scaling of each entry: +s_i own adapter, -s_h hot subtraction
    seg_start_host: tuple[int, ...]  # [G+1] entries seg_start[g]:seg_start[g+1] use slot seg_slot[g]; host
    seg_slot_host: tuple[int, ...]  # [G]; the references loop over these; the kernels walk the tiles
    hot_slot: int | None  # the slot merged into the base weights
    hot_slot_t: torch.Tensor  # [1] int32 on the device, the same (0 when none), read by the expand kernel
    hot_entry_of: torch.Tensor  # [E] int32, for an own-adapter entry: its token's hot-subtraction entry; else -1
    tile_entries: int  # the most entries in one tile
    shrink_tiles: torch.Tensor  # [N_s, 3] int32 (first entry, end entry, slot); every entry in exactly one
    expand_tiles: torch.Tensor  # [N_x, 3] int32, the same for the entries that own an output row
    # [2] int32 on the device: how many leading rows of shrink_tiles and expand_tiles are real. A CUDA graph's
    # tables are longer (its bucket's worst case, padding after the real tiles); the kernels read the counts
    # and spread their grid over the real tiles only, so a step's grid follows the tiles it has.
    tile_counts: torch.Tensor

    @property
    def num_entries(self) -> int:
        return len(self.token_idx)

    @property
    def empty(self) -> bool:
        return self.num_entries == 0


@dataclass(frozen=True)
class LoRATables:
    """A batch's correction metadata on the host, before it goes to the device (see `lora_batch_on_device`)."""
    num_tokens: int
    token_idx: np.ndarray  # [E] int64
    scale: np.ndarray  # [E] float32
    int32_tables: tuple[np.ndarray, ...]  # hot_entry_of, the hot slot, shrink tiles, expand tiles, tile counts
    seg_start_host: tuple[int, ...]
    seg_slot_host: tuple[int, ...]
    hot_slot: int | None
    tile_entries: int

    def packed_int32(self) -> np.ndarray:
        """The int32 tables in one array, each 16-byte aligned, as `lora_batch_on_device` takes them."""
        return pack(list(self.int32_tables), np.int32)


def lora_tables(token_slots: np.ndarray, slot_scales: np.ndarray, hot_slot: int | None) -> LoRATables:
    """token_slots: [T] int, each token's adapter slot, -1 for the base model.
    slot_scales: [S] float32, each slot's scaling (lora_alpha / r, or / sqrt(r) with rsLoRA).
    hot_slot: the slot merged into the base weights, or None.

    This runs on the host before every forward, so it is numpy: no thread-pool start-up per small op, which
    cost milliseconds per step on a many-core host."""
    slots = np.asarray(token_slots).astype(np.int64)
    scales = np.asarray(slot_scales).astype(np.float32)
    rows = np.arange(len(slots))
    own = (slots >= 0) if hot_slot is None else (slots >= 0) & (slots != hot_slot)
    parts_idx, parts_slot, parts_scale = [rows[own]], [slots[own]], [scales[slots[own]]]
    num_base = int((slots < 0).sum())
    if hot_slot is not None:
        minus_hot = np.concatenate([rows[slots < 0], rows[own]])  # base-model tokens first: the expand's tiles
        parts_idx.append(minus_hot)
        parts_slot.append(np.full(len(minus_hot), hot_slot, dtype=np.int64))
        parts_scale.append(np.full(len(minus_hot), -scales[hot_slot], dtype=np.float32))
    idx, slot, scale = np.concatenate(parts_idx), np.concatenate(parts_slot), np.concatenate(parts_scale)
    order = np.argsort(slot, kind="stable")
    idx, slot, scale = idx[order], slot[order], scale[order]
    seg_slot, counts = np.unique(slot, return_counts=True)  # slot is sorted: one run per distinct slot
    seg_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tile_entries = DECODE_TILE if len(slots) <= 512 else 32  # decode segments are short; prefill's reuse A/B
    expand_ends = seg_start[1:].copy()  # the expand owns the non-hot segments and the hot one's base prefix
    if hot_slot is not None:
        expand_ends[seg_slot == hot_slot] = seg_start[:-1][seg_slot == hot_slot] + num_base
    shrink_tiles = _tiles(seg_start[:-1], seg_start[1:], seg_slot, tile_entries)
    expand_tiles = _tiles(seg_start[:-1], expand_ends, seg_slot, tile_entries)
    int32_tables = (
        _hot_entry_of(idx, slot, len(slots), hot_slot), np.array([hot_slot or 0]), shrink_tiles, expand_tiles,
        np.array([len(shrink_tiles), len(expand_tiles)]),
    )
    return LoRATables(
        num_tokens=len(slots), token_idx=idx, scale=scale,
        int32_tables=tuple(np.asarray(t, dtype=np.int32).reshape(-1) for t in int32_tables),
        seg_start_host=tuple(seg_start.tolist()), seg_slot_host=tuple(seg_slot.tolist()),
        hot_slot=hot_slot, tile_entries=tile_entries,
    )


def lora_batch_on_device(
    tables: LoRATables, token_idx: torch.Tensor, scale: torch.Tensor, int32_tables: torch.Tensor
) -> LoRABatch:
    """The batch over device copies of `tables`: token_idx int64, scale float32, and its int32 tables in one."""
    hot_entry_of, hot_t, shrink, expand, counts = unpack(int32_tables, [len(t) for t in tables.int32_tables])
    return LoRABatch(
        num_tokens=tables.num_tokens,
        token_idx=token_idx,
        scale=scale,
        seg_start_host=tables.seg_start_host,
        seg_slot_host=tables.seg_slot_host,
        hot_slot=tables.hot_slot,
        hot_slot_t=hot_t,
        hot_entry_of=hot_entry_of,
        tile_entries=tables.tile_entries,
        shrink_tiles=shrink.view(-1, 3),
        expand_tiles=expand.view(-1, 3),
        tile_counts=counts,
    )


def build_lora_batch(
    token_slots: torch.Tensor, slot_scales: torch.Tensor, hot_slot: int | None, device: torch.device | str
) -> LoRABatch:
    """`lora_tables` of host tensors, sent to `device` (the engine's runner packs them with its other inputs)."""
    t = lora_tables(token_slots.numpy(), slot_scales.numpy(), hot_slot)
    int32_tables = torch.from_numpy(t.packed_int32()).to(device)
    token_idx, scale = torch.from_numpy(t.token_idx).to(device), torch.from_numpy(t.scale).to(device)
    return lora_batch_on_device(t, token_idx, scale, int32_tables)


def max_tiles(num_entries: int, num_slots: int, tile_entries: int) -> int:
    """The most tiles `num_entries` entries over at most `num_slots` segments can cut into: each segment has
    at most one partial tile, and its full tiles hold tile_entries entries each. What a CUDA graph sizes for."""
    return num_entries // tile_entries + min(num_slots, num_entries)


def _hot_entry_of(idx: np.ndarray, slot: np.ndarray, num_tokens: int, hot_slot: int | None) -> np.ndarray:
    """[E]: for each entry of a token's own adapter, the position of the same token's hot entry; else -1."""
    hot_entry_of = np.full(len(idx), -1, dtype=np.int64)
    if hot_slot is None:
        return hot_entry_of
    is_hot = slot == hot_slot
    hot_entry_of_token = np.full(num_tokens, -1, dtype=np.int64)
    hot_entry_of_token[idx[is_hot]] = np.flatnonzero(is_hot)
    hot_entry_of[~is_hot] = hot_entry_of_token[idx[~is_hot]]
    return hot_entry_of


def _tiles(starts: np.ndarray, ends: np.ndarray, slots: np.ndarray, size: int) -> np.ndarray:
    """Cut each run starts[g]:ends[g] into tiles of at most `size` entries: [N, 3] (first, end, slot)."""
    lengths = np.maximum(ends - starts, 0)
    per_run = (lengths + size - 1) // size
    run = np.repeat(np.arange(len(starts)), per_run)
    first_tile = np.cumsum(per_run) - per_run
    first = starts[run] + (np.arange(len(run)) - first_tile[run]) * size
    end = np.minimum(first + size, ends[run])
    return np.stack([first, end, slots[run]], axis=1)
