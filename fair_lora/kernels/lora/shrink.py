"""Triton shrink: v[e, :r_s] = x[t_e] · A[s_e, :r_s]ᵀ for every entry e, float32 accumulate (SGMV-style).

A tile is a run of at most `batch.tile_entries` entries of one slot, so a program reads its slice of one
adapter's A once for all its entries while it gathers their rows of x. A slot's rank is read on the device
(`slots.ranks`), so the launch needs no host sync: rank blocks past it load nothing and only write zeros, and
rank-0 slots (projection not targeted) cost just that. A group of projections of the same x (q/k/v, gate/up)
stacks their A along the rank, so one launch computes all their v columns; each rank block belongs to one
sub-projection (R is a multiple of BLOCK_R) and masks by its rank.

A tile is at most 16-32 rows by 16 rank columns, so one program's dot over all of H_in would be a long serial
chain on one SM, the kernel's latency for a wide H_in. So H_in is split over programs (split-K), each walking
at most MAX_K_BLOCKS blocks, more splits when there are few tiles, and they add their partial sums into a
zeroed v with float32 atomics. Their order is free, so v may differ in the last bit between runs; with one
split each element gets one add onto zero and v is exact.

The grid is one fixed row of programs (a CUDA graph bakes it in), but how it is cut follows the tiles present:
each program reads the batch's real tile count (`batch.tile_counts`), picks the split that spreads those tiles
over about BUSY_GRID programs, and finds its (tile, rank block, split) from its index; programs past the work
exit at once. Sized on the host, the split followed the graph bucket's padded tile table, so a decode step
with a few cold tokens walked long K chains in a fraction of the programs it was launched with.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.dot_precision import dot_precision
from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.slots import LoRASlots

BLOCK_R = 16  # the smallest tl.dot width; mixed ranks pad at most one such block of work
BLOCK_K = 128
BUSY_GRID = 512  # programs enough to keep an H100/H200 busy; split H_in until the work has about this many
MAX_K_BLOCKS = 8  # the most H_in blocks one program walks: its serial dot chain bounds the kernel's latency


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, v_ptr, token_idx_ptr, tiles_ptr, counts_ptr, ranks_ptr,
    h_in, width, num_rows, num_slots, r_blocks, k_blocks, min_split, stride_x, stride_a_slot, stride_a_rank,
    stride_v, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BUSY: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_tiles = tl.load(counts_ptr)  # the real tiles; the table may be longer (graph padding)
    split_k = tl.minimum(tl.maximum(BUSY // tl.maximum(r_blocks * num_tiles, 1), min_split), k_blocks)
    tile, r_block, split = pid // (r_blocks * split_k), pid // split_k % r_blocks, pid % split_k
    tile_ok = tile < num_tiles
    first = tl.load(tiles_ptr + tile * 3, mask=tile_ok, other=0)
    end = tl.load(tiles_ptr + tile * 3 + 1, mask=tile_ok, other=0)
    slot = tl.load(tiles_ptr + tile * 3 + 2, mask=tile_ok, other=0).to(tl.int64)
    sub = r_block * BLOCK_R // width  # the sub-projection whose rank rows this block reads (width % BLOCK_R == 0)
    rank = tl.load(ranks_ptr + sub * num_slots + slot)
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < end
    r = r_block * BLOCK_R + tl.arange(0, BLOCK_R)  # rows of the stacked A, columns of v
    t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
    r_ok = r - sub * width < rank
    x_rows = x_ptr + t[:, None] * stride_x
    a_rows = a_ptr + slot * stride_a_slot + r[:, None] * stride_a_rank
    # Not tl.zeros: a @jit helper, which breaks in the interpreter when triton was imported before TRITON_INTERPRET.
    acc = tl.full((BLOCK_E, BLOCK_R), 0.0, tl.float32)
    k_per_split = ((k_blocks + split_k - 1) // split_k) * BLOCK_K
    k_first = split * k_per_split
    # No work past the slot's rank, nor for an empty tile or a program past the work.
    active = (r_block * BLOCK_R - sub * width < rank) & (first < end)
    k_end = tl.where(active, tl.minimum(k_first + k_per_split, h_in), k_first)
    for k0 in range(k_first, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < h_in
        xs = tl.load(x_rows + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        a = tl.load(a_rows + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xs.to(tl.float32), tl.trans(a.to(tl.float32)), input_precision=PRECISION)
    v_block = v_ptr + e[:, None] * stride_v + r[None, :]
    mask = e_ok[:, None] & (r[None, :] < num_rows)
    tl.atomic_add(v_block, acc, mask=mask, sem="relaxed")


def lora_shrink(x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> torch.Tensor:
    """x: [T, H_in] (rows may be strided); slots.a: [S, n·R, H_in] contiguous, same dtype as x.
    Returns v: [E, n·R] float32, every element written; columns past an entry's rank are zero."""
    num_slots, num_rows, h_in = slots.a.shape
    width = slots.rank_width
    assert x.dim() == 2 and x.shape == (batch.num_tokens, h_in), f"x {tuple(x.shape)} vs A {tuple(slots.a.shape)}"
    assert x.stride(1) == 1 and slots.a.is_contiguous(), "x rows and A must be contiguous"
    assert x.dtype == slots.a.dtype, f"x is {x.dtype} but A is {slots.a.dtype}"
    assert slots.ranks.dtype == torch.int32 and slots.ranks.is_contiguous() and slots.ranks.shape[1] == num_slots
    assert width % BLOCK_R == 0 or len(slots.out_sizes) == 1, "a rank block must not straddle sub-projections"
    assert batch.token_idx.device == x.device == slots.a.device == batch.shrink_tiles.device
    r_blocks, k_blocks = triton.cdiv(num_rows, BLOCK_R), triton.cdiv(h_in, BLOCK_K)
    min_split = triton.cdiv(k_blocks, MAX_K_BLOCKS)
    # Enough programs for every tile the table can hold at the fewest splits, and at least BUSY_GRID.
    grid = max(BUSY_GRID, r_blocks * min_split * batch.shrink_tiles.shape[0])
    v = torch.zeros(batch.num_entries, num_rows, dtype=torch.float32, device=x.device)
    if batch.empty:
        return v
    _shrink_kernel[(grid,)](
        x, slots.a, v, batch.token_idx, batch.shrink_tiles, batch.tile_counts, slots.ranks,
        h_in, width, num_rows, num_slots, r_blocks, k_blocks, min_split,
        x.stride(0), slots.a.stride(0), slots.a.stride(1), v.stride(0),
        BLOCK_E=batch.tile_entries, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, BUSY=BUSY_GRID, PRECISION=dot_precision(x.dtype),
    )
    return v
