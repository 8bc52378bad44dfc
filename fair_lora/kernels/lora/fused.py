"""Triton fused correction for decode-sized batches: shrink and expand in one launch, v never leaves registers.

    y[t, cols_j] += c_own · (x[t] · A_j[s]ᵀ) · B_j[s]ᵀ  +  c_hot · (x[t] · A_j[h]ᵀ) · B_j[h]ᵀ

A decode step's correction is bound by latency, not bytes: with a few cold tokens the split-K shrink (with
the zeroing of its v) and the expand are three dependent launches of tiny kernels per projection group, and a
Llama-7B step pays them for 128 groups however few tokens are cold (docs/benchmarks.md). Here one program takes a work
item (an expand tile of entries, and a run of column blocks of one sub-projection), computes the tile's v for
that sub-projection over the whole H_in itself, and expands it into its columns. The price is recomputing v
once per item instead of once per tile: x and the two A slices (own and hot) are re-read from L2 by every
item of a tile, and the dot over H_in is serial in each program (in CHAINS chains). Both are small at decode
sizes (16 entries x rank 16), and large for prefill, which keeps shrink + expand (`correction.py` picks).

Rows are written as the expand writes them: every output row by one program, once, own term and hot term summed
in float32 registers (`batch.expand_tiles`, `batch.hot_entry_of`); no atomics, so the result is deterministic.
A cold token's hot partner is the same token, so both shrinks share its x loads.

The grid is a fixed row of programs (a CUDA graph bakes it in) that loops over the items: the item count comes
from the batch's real tile count on the device (`batch.tile_counts`), so a graph sized for its bucket's worst
case costs only the programs it launches, never a wave of empty ones.
"""
import functools

import torch
import triton
import triton.language as tl

from fair_lora.kernels.dot_precision import dot_precision, dot_upcast
from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.expand import column_blocks
from fair_lora.kernels.lora.slots import LoRASlots

# The dot over H_in: CHAINS accumulators (1, 2 or 4, see _tile_v) take its BLOCK_K blocks in turn. 4 x 32 reads
# per step what 1 x 128 does, in chains 4 times shorter; compiled for sm_90 with 4 warps neither spills registers
# (4 x 128 does: tests/test_kernels_compile.py).
BLOCK_K = 32
CHAINS = 4
BLOCK_N = 128  # at most this many H_out columns per block (expand.column_blocks halves it for rank 128)
BLOCKS_PER_ITEM = 4  # column blocks an item expands: more amortize its shrink, fewer spread a step wider
GRID = 264  # programs launched (about two per SM of an H100/H200); each loops over items past that


@triton.jit
def _a_rows(a_ptr, ranks_ptr, slot, sub, width, stride_a_slot, stride_a_rank, BLOCK_R: tl.constexpr):
    """Pointers to A[slot, sub·width + r] for the rank block, which of them are real (r < rank), and the rank
    (ranks_ptr: sub-projection `sub`'s row of the ranks)."""
    rank = tl.load(ranks_ptr + slot)
    r = tl.arange(0, BLOCK_R)
    return a_ptr + slot * stride_a_slot + (sub * width + r)[:, None] * stride_a_rank, r < rank, rank


@triton.jit
def _k_block(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k0, acc, acc_hot, HAS_HOT: tl.constexpr,
             BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += x[t, k0:k0+BLOCK_K] · A_own[:, k0:k0+BLOCK_K]ᵀ, and acc_hot the same against A_hot (x loaded once)."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_ok = k < h_in
    xs = tl.load(x_rows + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
    a = tl.load(a_own + k[None, :], mask=own_ok[:, None] & k_ok[None, :], other=0.0)
    if UPCAST:
        xs, a = xs.to(tl.float32), a.to(tl.float32)
    acc = tl.dot(xs, tl.trans(a), acc, input_precision=PRECISION)
    if HAS_HOT:
        a_h = tl.load(a_hot + k[None, :], mask=hot_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            a_h = a_h.to(tl.float32)
        acc_hot = tl.dot(xs, tl.trans(a_h), acc_hot, input_precision=PRECISION)
    return acc, acc_hot


@triton.jit
def _tile_v(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k_end, HAS_HOT: tl.constexpr,
            BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, CHAINS: tl.constexpr,
            PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """[BLOCK_E, BLOCK_R] float32 x[t] · A_ownᵀ and x[t] · A_hotᵀ (zeros past each rank), in one pass over H_in
    (k_end: h_in, or 0 when neither has a rank row to read): each block of x is loaded once for both.

    The dot over H_in is this program's latency: every tl.dot's multiply-adds feed one accumulator, one after
    another, H_in / 16 of them (688 for Llama-7B's down projection, where the split-K shrink gives a program at
    most 64). CHAINS accumulators (1, 2 or 4) take the K blocks in turn, so as many chains run side by side,
    each CHAINS times shorter, summed at the end.

    16-bit operands go to tl.dot as they are (products of two bf16/fp16 values are exact in its float32
    accumulator, as in the shrink's tf32 dot of upcast ones); UPCAST only for the interpreter (dot_precision.py)."""
    acc0 = tl.full((BLOCK_E, BLOCK_R), 0.0, tl.float32)  # not tl.zeros: see shrink.py
    hot0, acc1, hot1, acc2, hot2, acc3, hot3 = acc0, acc0, acc0, acc0, acc0, acc0, acc0
    for k0 in range(0, k_end, CHAINS * BLOCK_K):
        acc0, hot0 = _k_block(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k0, acc0, hot0, HAS_HOT, BLOCK_K,
                              PRECISION, UPCAST)
        if CHAINS >= 2:
            acc1, hot1 = _k_block(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k0 + BLOCK_K, acc1, hot1,
                                  HAS_HOT, BLOCK_K, PRECISION, UPCAST)
        if CHAINS >= 4:
            acc2, hot2 = _k_block(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k0 + 2 * BLOCK_K, acc2, hot2,
                                  HAS_HOT, BLOCK_K, PRECISION, UPCAST)
            acc3, hot3 = _k_block(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, k0 + 3 * BLOCK_K, acc3, hot3,
                                  HAS_HOT, BLOCK_K, PRECISION, UPCAST)
    return (acc0 + acc1) + (acc2 + acc3), (hot0 + hot1) + (hot2 + hot3)


@triton.jit
def _fused_kernel(
    y_ptr, x_ptr, a_ptr, b_t_ptr, token_idx_ptr, scale_ptr, hot_entry_of_ptr, tiles_ptr, counts_ptr, ranks_ptr,
    hot_slot_ptr, items_ptr, num_groups, h_in, width, num_slots, stride_y, stride_x, stride_a_slot, stride_a_rank,
    stride_b_slot, stride_b_rank,
    HAS_HOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, CHAINS: tl.constexpr, GRID: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    num_tiles = tl.load(counts_ptr + 1)  # the real expand tiles; the table may be longer (graph padding)
    # The tile is the fastest index: programs that run together read the same B columns (L2 hits).
    for item in range(tl.program_id(0), num_tiles * num_groups, GRID):
        tile, group = item % num_tiles, item // num_tiles
        first = tl.load(tiles_ptr + tile * 3)
        end = tl.load(tiles_ptr + tile * 3 + 1)
        slot = tl.load(tiles_ptr + tile * 3 + 2).to(tl.int64)
        # The item's columns: sub-projection j, its columns [col, col_end) of the fused output [T, ΣH_out].
        j = tl.load(items_ptr + group * 3)
        col = tl.load(items_ptr + group * 3 + 1)
        col_end = tl.load(items_ptr + group * 3 + 2)
        e = first + tl.arange(0, BLOCK_E)
        e_ok = e < end
        t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
        x_rows = x_ptr + t[:, None] * stride_x
        ranks_j = ranks_ptr + j * num_slots
        a_own, own_ok, rank = _a_rows(a_ptr, ranks_j, slot, j, width, stride_a_slot, stride_a_rank, BLOCK_R)
        a_hot, hot_ok, hot_rank = a_own, own_ok, rank
        p_ok = e_ok
        hot_reads = rank < 0  # false
        if HAS_HOT:
            hot = tl.load(hot_slot_ptr).to(tl.int64)  # a device scalar: a captured graph follows hot switches
            a_hot, hot_ok, hot_rank = _a_rows(a_ptr, ranks_j, hot, j, width, stride_a_slot, stride_a_rank, BLOCK_R)
            p = tl.load(hot_entry_of_ptr + e, mask=e_ok, other=-1)
            p_ok = e_ok & (p >= 0)  # own-adapter entries carry their token's hot subtraction along
            # Every entry of a non-hot tile has a hot partner, none of the hot tile's: that tile reads no A_h twice.
            hot_rank = tl.where(slot != hot, hot_rank, 0)
            hot_ok = tl.arange(0, BLOCK_R) < hot_rank
            hot_reads = hot_rank > 0
        # No walk over H_in where no rank row is read: a sub-projection neither adapter targets (q/v-only PEFT).
        reads = (rank > 0) | hot_reads
        v, v_hot = _tile_v(x_rows, e_ok, a_own, own_ok, a_hot, hot_ok, h_in, tl.where(reads, h_in, 0), HAS_HOT,
                           BLOCK_E, BLOCK_R, BLOCK_K, CHAINS, PRECISION, UPCAST)
        v = v * tl.load(scale_ptr + e, mask=e_ok, other=0.0)[:, None]
        if HAS_HOT:
            v_hot = v_hot * tl.load(scale_ptr + p, mask=p_ok, other=0.0)[:, None]
        r = tl.arange(0, BLOCK_R)
        for c0 in range(col, col_end, BLOCK_N):
            n = c0 + tl.arange(0, BLOCK_N)
            n_ok = n < col_end
            b = tl.load(b_t_ptr + slot * stride_b_slot + r[:, None] * stride_b_rank + n[None, :],
                        mask=(r[:, None] < rank) & n_ok[None, :], other=0.0)
            acc = tl.dot(v, b.to(tl.float32), input_precision=PRECISION)
            if HAS_HOT:
                b_hot = tl.load(b_t_ptr + hot * stride_b_slot + r[:, None] * stride_b_rank + n[None, :],
                                mask=(r[:, None] < hot_rank) & n_ok[None, :], other=0.0)
                acc = tl.dot(v_hot, b_hot.to(tl.float32), acc, input_precision=PRECISION)
            y_block = y_ptr + t[:, None] * stride_y + n[None, :]
            mask = e_ok[:, None] & n_ok[None, :]
            y = tl.load(y_block, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_block, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def column_items(out_sizes: tuple[int, ...], block_n: int, blocks_per_item: int, device: str) -> torch.Tensor:
    """[G, 3] int32 (sub-projection, first column, end column): each sub-projection's columns cut into runs of
    `blocks_per_item` blocks. Fixed per projection shape, so it is built once (before any graph capture: the
    first call of a shape is the warm-up's eager forward) and never copied again."""
    rows, offset, width = [], 0, block_n * blocks_per_item
    for j, size in enumerate(out_sizes):
        for start in range(0, size, width):
            rows.append((j, offset + start, offset + min(start + width, size)))
        offset += size
    return torch.tensor(rows, dtype=torch.int32, device=device)


def lora_fused(y: torch.Tensor, x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, ΣH_out] (rows may be strided), updated in place; x: [T, H_in], same dtype as slots.a; slots as for
    the shrink and expand (A [S, n·R, H_in], Bᵀ [S, R, ΣH_out] contiguous, R <= 128)."""
    num_slots, num_rows, h_in = slots.a.shape
    width, sizes = slots.rank_width, slots.out_sizes
    assert x.shape == (batch.num_tokens, h_in) and y.shape == (batch.num_tokens, sum(sizes))
    assert x.stride(1) == 1 and y.stride(1) == 1 and slots.a.is_contiguous() and slots.b_t.is_contiguous()
    assert x.dtype == slots.a.dtype and width <= 128 and num_rows == width * len(sizes)
    assert slots.ranks.dtype == torch.int32 and slots.ranks.is_contiguous() and slots.ranks.shape[1] == num_slots
    assert batch.token_idx.device == x.device == y.device == slots.a.device == batch.expand_tiles.device
    assert CHAINS in (1, 2, 4), f"CHAINS is {CHAINS}: the kernel has 1, 2 or 4 accumulators"
    if batch.empty:
        return
    block_r, block_n = column_blocks(width, sizes)
    block_n = min(block_n, BLOCK_N)  # this kernel's own BLOCK_N (tuned apart from the expand's)
    items = column_items(tuple(sizes), block_n, BLOCKS_PER_ITEM, str(x.device))
    _fused_kernel[(GRID,)](
        y, x, slots.a, slots.b_t, batch.token_idx, batch.scale, batch.hot_entry_of, batch.expand_tiles,
        batch.tile_counts, slots.ranks, batch.hot_slot_t, items, items.shape[0], h_in, width, num_slots,
        y.stride(0), x.stride(0), slots.a.stride(0), slots.a.stride(1), slots.b_t.stride(0), slots.b_t.stride(1),
        HAS_HOT=batch.hot_slot is not None, BLOCK_E=batch.tile_entries, BLOCK_N=block_n, BLOCK_R=block_r,
        BLOCK_K=BLOCK_K, CHAINS=CHAINS, GRID=GRID, PRECISION=dot_precision(x.dtype), UPCAST=dot_upcast(x.dtype),
    )
