"""Triton expand: y[t_e] += c_e · v[e, :r_s] · B[s_e, :, :r_s]ᵀ for every entry e, float32 accumulate.

A cold token has two entries in different segments (its adapter, +s_i, and the hot subtraction, -s_h), so
two segment programs would write its y row. Instead every row is written by one program, once: the grid
runs over `batch.expand_tiles` (own-adapter entries, and base-model tokens' hot entries), and a program adds
its entries' own term and their hot partners' term (`batch.hot_entry_of`; all partners sit in the one hot slot, so
that term is also one dense tl.dot against a single B_h block) in float32 registers, then does one
read-add-write of its y block. No atomics, no float32 [T, H_out] buffer, no memset or cast pass (each of
those is a launch and a pass over y per projection), and the result is deterministic.

B is stored transposed (`LoRASlots.b_t`, [S, R, H_out]): a block of it is r rows contiguous along H_out,
wide vector loads that are already the dot's [K, N] operand; read from [S, H_out, R] (32-byte rows at rank 16)
the same kernel was much slower.

A group of projections of the same input (q/k/v, gate/up: `LoRASlots` with n sub-projections) is one launch
over the fused output [T, ΣH_out]: its column blocks are numbered through the sub-projections in turn, and a
block of sub-projection j reads v's columns j·R:(j+1)·R and the slot's rank for j. That halves the launches
of a decode step, whose correction is bound by latency, not bytes.

Work items are (tile, group of H_out blocks). Decode (T <= 256, ~100 adapters, rank 16) is bound by reading
each distinct B once and by latency, so a program walks a few H_out blocks in a pipelined loop when there are
enough items to fill the GPU. The grid is one fixed row of programs (a CUDA graph bakes it in); each program
reads the batch's real tile count (`batch.tile_counts`) and cuts the work from it, not from the graph bucket's
padded tile table, and programs past the work exit at once. Prefill (2k tokens, few adapters) is bound by
the y traffic, read and written once. A program holds the whole padded rank R in one block (R <= 128):
the loads past a slot's rank are masked, so mixed ranks move only their own bytes; the padding costs only
multiply-adds on zeros, at most one rank block of them.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.dot_precision import dot_precision
from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.slots import LoRASlots

MIN_GRID = 128  # about one program per SM of an H100/H200; past that many items a program walks more blocks
MAX_BLOCKS_PER_PROGRAM = 4
BLOCK_N = 128  # H_out columns per block (halved when the rank block is 128 wide, to bound registers)


@triton.jit
def _scaled_v(v_ptr, scale_ptr, ranks_ptr, e, e_ok, slot, stride_v, BLOCK_R: tl.constexpr):
    """[BLOCK_E, BLOCK_R] float32 c_e · v[e, :r] (zero past the slot's rank and on rows not e_ok), and r."""
    rank = tl.load(ranks_ptr + slot)
    r = tl.arange(0, BLOCK_R)
    vs = tl.load(v_ptr + e[:, None] * stride_v + r[None, :], mask=e_ok[:, None] & (r[None, :] < rank), other=0.0)
    return vs * tl.load(scale_ptr + e, mask=e_ok, other=0.0)[:, None], rank


@triton.jit
def _b_block(b_t_ptr, slot, rank, n, n_ok, stride_b_slot, stride_b_rank, BLOCK_R: tl.constexpr):
    """[BLOCK_R, BLOCK_N] float32 B[slot, n, :r]ᵀ, zero past the rank: rows of Bᵀ, contiguous along n."""
    r = tl.arange(0, BLOCK_R)
    b = tl.load(b_t_ptr + slot * stride_b_slot + r[:, None] * stride_b_rank + n[None, :],
                mask=(r[:, None] < rank) & n_ok[None, :], other=0.0)
    return b.to(tl.float32)  # float32 operands: see dot_precision.py


@triton.jit
def _expand_kernel(
    y_ptr, v_ptr, b_t_ptr, token_idx_ptr, scale_ptr, hot_entry_of_ptr, tiles_ptr, counts_ptr, ranks_ptr,
    hot_slot_ptr, num_blocks, width, num_slots, stride_y, stride_v, stride_b_slot, stride_b_rank,
    size0, size1, size2, start1, start2,
    HAS_HOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    MIN_PROGRAMS: tl.constexpr, MAX_BLOCKS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    num_tiles = tl.load(counts_ptr + 1)  # the real expand tiles; the table may be longer (graph padding)
    blocks_per_program = tl.minimum(tl.maximum(num_tiles * num_blocks // MIN_PROGRAMS, 1), MAX_BLOCKS)
    # The tile is the fastest index: programs that run together read the same hot B columns (L2 hits).
    tiles = tl.maximum(num_tiles, 1)
    tile, n_group = pid % tiles, pid // tiles
    tile_ok = pid < num_tiles * ((num_blocks + blocks_per_program - 1) // blocks_per_program)
    first = tl.load(tiles_ptr + tile * 3, mask=tile_ok, other=0)
    end = tl.load(tiles_ptr + tile * 3 + 1, mask=tile_ok, other=0)
    slot = tl.load(tiles_ptr + tile * 3 + 2, mask=tile_ok, other=0).to(tl.int64)
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < end
    t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
    if HAS_HOT:
        hot = tl.load(hot_slot_ptr).to(tl.int64)  # a device scalar: a captured graph follows hot switches
        p = tl.load(hot_entry_of_ptr + e, mask=e_ok, other=-1)
    b_first = n_group * blocks_per_program
    b_end = tl.where(first < end, tl.minimum(b_first + blocks_per_program, num_blocks), b_first)  # empty: padding
    for blk in range(b_first, b_end):
        # Column blocks are numbered through the sub-projections in turn (start1, start2: the first block of
        # sub 1 and sub 2), so no block straddles two of them and each reads its own v columns and Bᵀ columns.
        j = (blk >= start1).to(tl.int32) + (blk >= start2).to(tl.int32)
        start = tl.where(j == 0, 0, tl.where(j == 1, start1, start2))
        size = tl.where(j == 0, size0, tl.where(j == 1, size1, size2))
        offset = tl.where(j == 0, 0, tl.where(j == 1, size0, size0 + size1))
        local = (blk - start) * BLOCK_N + tl.arange(0, BLOCK_N)
        n, n_ok = offset + local, local < size
        v_own, rank = _scaled_v(v_ptr + j * width, scale_ptr, ranks_ptr + j * num_slots, e, e_ok, slot, stride_v,
                                BLOCK_R)
        b = _b_block(b_t_ptr, slot, rank, n, n_ok, stride_b_slot, stride_b_rank, BLOCK_R)
        acc = tl.dot(v_own, b, input_precision=PRECISION)
        if HAS_HOT:
            v_hot, hot_rank = _scaled_v(v_ptr + j * width, scale_ptr, ranks_ptr + j * num_slots, p, p >= 0, hot,
                                        stride_v, BLOCK_R)
            b_hot = _b_block(b_t_ptr, hot, hot_rank, n, n_ok, stride_b_slot, stride_b_rank, BLOCK_R)
            acc = tl.dot(v_hot, b_hot, acc, input_precision=PRECISION)
        y_block = y_ptr + t[:, None] * stride_y + n[None, :]
        mask = e_ok[:, None] & n_ok[None, :]
        y = tl.load(y_block, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_block, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


def lora_expand(y: torch.Tensor, v: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, ΣH_out] float32/bf16/fp16 (rows may be strided), updated in place; v: [E, n·R] float32 from the
    shrink; slots.b_t: [S, R, ΣH_out] contiguous, R <= 128, n <= 3. Rows of tokens without entries are left
    untouched."""
    num_slots, width, h_out = slots.b_t.shape
    sizes = slots.out_sizes
    assert y.dim() == 2 and y.shape == (batch.num_tokens, h_out), f"y {tuple(y.shape)} vs B {tuple(slots.b.shape)}"
    assert v.shape == (batch.num_entries, width * len(sizes)) and v.dtype == torch.float32 and v.is_contiguous()
    assert y.stride(1) == 1 and slots.b_t.is_contiguous(), "y rows and Bᵀ must be contiguous"
    assert y.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported y dtype {y.dtype}"
    assert width <= 128, f"pool rank {width} > 128 would not fit one rank block"
    assert len(sizes) <= 3, "at most three sub-projections (q/k/v)"
    assert slots.ranks.dtype == torch.int32 and slots.ranks.is_contiguous() and slots.ranks.shape[1] == num_slots
    assert batch.token_idx.device == y.device == v.device == slots.b_t.device == batch.expand_tiles.device
    if batch.empty:
        return
    block_r = max(16, triton.next_power_of_2(width))
    block_n = min(BLOCK_N if block_r <= 64 else BLOCK_N // 2, max(16, triton.next_power_of_2(max(sizes))))
    per_sub = [triton.cdiv(size, block_n) for size in sizes] + [0, 0]
    n_blocks = sum(per_sub)
    num_tiles = batch.expand_tiles.shape[0]
    # Enough programs for any real tile count up to the table's length (the kernel picks the blocks per
    # program from the count: fewer than 2·MIN_GRID items at one block each, else the items shrink as they grow).
    grid = max(2 * MIN_GRID + num_tiles, num_tiles * triton.cdiv(n_blocks, MAX_BLOCKS_PER_PROGRAM))
    padded = list(sizes) + [0] * (3 - len(sizes))
    _expand_kernel[(grid,)](
        y, v, slots.b_t, batch.token_idx, batch.scale, batch.hot_entry_of, batch.expand_tiles, batch.tile_counts,
        slots.ranks, batch.hot_slot_t, n_blocks, width, num_slots,
        y.stride(0), v.stride(0), slots.b_t.stride(0), slots.b_t.stride(1),
        *padded, per_sub[0] if len(sizes) > 1 else n_blocks, per_sub[0] + per_sub[1] if len(sizes) > 2 else n_blocks,
        HAS_HOT=batch.hot_slot is not None, BLOCK_E=batch.tile_entries, BLOCK_N=block_n, BLOCK_R=block_r,
        MIN_PROGRAMS=MIN_GRID, MAX_BLOCKS=MAX_BLOCKS_PER_PROGRAM, PRECISION=dot_precision(slots.b_t.dtype),
    )
