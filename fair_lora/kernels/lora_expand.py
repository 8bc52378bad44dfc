"""Triton expand: y[t_e] += c_e · v[e, :r_s] · B[s_e, :, :r_s]ᵀ for every entry e, float32 accumulate.

A cold token has two entries in different segments (its adapter, +s_i, and the hot subtraction, -s_h), so
two segment programs would write its y row. Instead every row is written by one program, once: the grid
runs over `batch.expand_tiles` (own-adapter entries, and base-model tokens' hot entries), and a program adds
its entries' own term and their hot partners' term (`batch.pair`; all partners sit in the one hot slot, so
that term is also one dense tl.dot against a single B_h block) in float32 registers, then does one
read-add-write of its y block. No atomics, no float32 [T, H_out] buffer, no memset or cast pass (each of
those is a launch and a pass over y per projection), and the result is deterministic.

B is stored transposed (`LoRASlots.b_t`, [S, R, H_out]): a block of it is r rows contiguous along H_out,
wide vector loads that are already the dot's [K, N] operand; read from [S, H_out, R] (32-byte rows at rank 16)
the same kernel ran 2x slower on an H200.

Grid (tile, group of H_out blocks). Decode (T <= 256, ~100 adapters, rank 16) is bound by reading each
distinct B once and by latency, so a program walks a few H_out blocks in a pipelined loop, with its v rows
loaded once, when there are enough programs to fill the GPU; prefill (2k tokens, few adapters) is bound by
the y traffic, read and written once. A program holds the whole padded rank R in one block (R <= 128):
the loads past a slot's rank are masked, so mixed ranks move only their own bytes; the padding costs only
multiply-adds on zeros, at most one rank block of them.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_slots import LoRASlots

MIN_GRID = 128  # about one program per SM of an H100/H200; past that a program walks more H_out blocks
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
    return b.to(tl.float32)  # float32 operands: see lora_shrink._precision


@triton.jit
def _expand_kernel(
    y_ptr, v_ptr, b_t_ptr, token_idx_ptr, scale_ptr, pair_ptr, tiles_ptr, ranks_ptr,
    hot_slot_ptr, h_out, n_per_program, stride_y, stride_v, stride_b_slot, stride_b_rank,
    HAS_HOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile, n_group = tl.program_id(0), tl.program_id(1)
    first = tl.load(tiles_ptr + tile * 3)
    end = tl.load(tiles_ptr + tile * 3 + 1)
    slot = tl.load(tiles_ptr + tile * 3 + 2).to(tl.int64)
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < end
    t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
    v_own, rank = _scaled_v(v_ptr, scale_ptr, ranks_ptr, e, e_ok, slot, stride_v, BLOCK_R)
    if HAS_HOT:
        hot = tl.load(hot_slot_ptr).to(tl.int64)  # a device scalar: a captured graph follows hot switches
        p = tl.load(pair_ptr + e, mask=e_ok, other=-1)
        v_hot, hot_rank = _scaled_v(v_ptr, scale_ptr, ranks_ptr, p, p >= 0, hot, stride_v, BLOCK_R)
    n_first = n_group * n_per_program
    n_end = tl.where(first < end, tl.minimum(n_first + n_per_program, h_out), n_first)  # empty tiles: padding
    for n0 in range(n_first, n_end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < h_out
        b = _b_block(b_t_ptr, slot, rank, n, n_ok, stride_b_slot, stride_b_rank, BLOCK_R)
        acc = tl.dot(v_own, b, input_precision=PRECISION)
        if HAS_HOT:
            b_hot = _b_block(b_t_ptr, hot, hot_rank, n, n_ok, stride_b_slot, stride_b_rank, BLOCK_R)
            acc = tl.dot(v_hot, b_hot, acc, input_precision=PRECISION)
        y_block = y_ptr + t[:, None] * stride_y + n[None, :]
        mask = e_ok[:, None] & n_ok[None, :]
        y = tl.load(y_block, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_block, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


def lora_expand(y: torch.Tensor, v: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, H_out] float32/bf16/fp16 (rows may be strided), updated in place; v: [E, R] float32 from the
    shrink; slots.b_t: [S, R, H_out] contiguous, R <= 128. Rows of tokens without entries are left untouched."""
    num_slots, max_rank, h_out = slots.b_t.shape
    assert y.dim() == 2 and y.shape == (batch.num_tokens, h_out), f"y {tuple(y.shape)} vs B {tuple(slots.b.shape)}"
    assert v.shape == (batch.num_entries, max_rank) and v.dtype == torch.float32 and v.is_contiguous()
    assert y.stride(1) == 1 and slots.b_t.is_contiguous(), "y rows and Bᵀ must be contiguous"
    assert y.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported y dtype {y.dtype}"
    assert max_rank <= 128, f"pool rank {max_rank} > 128 would not fit one rank block"
    assert slots.ranks.dtype == torch.int32 and slots.ranks.shape == (num_slots,)
    assert batch.token_idx.device == y.device == v.device == slots.b_t.device == batch.expand_tiles.device
    if batch.empty:
        return
    block_r = max(16, triton.next_power_of_2(max_rank))
    block_n = min(BLOCK_N if block_r <= 64 else BLOCK_N // 2, max(16, triton.next_power_of_2(h_out)))
    num_tiles, n_blocks = batch.expand_tiles.shape[0], triton.cdiv(h_out, block_n)
    blocks_per_program = max(1, min(MAX_BLOCKS_PER_PROGRAM, num_tiles * n_blocks // MIN_GRID))
    grid = (num_tiles, triton.cdiv(n_blocks, blocks_per_program))
    has_hot = batch.hot_slot is not None
    _expand_kernel[grid](
        y, v, slots.b_t, batch.token_idx, batch.scale, batch.pair, batch.expand_tiles, slots.ranks,
        batch.hot_slot_t, h_out, blocks_per_program * block_n,
        y.stride(0), v.stride(0), slots.b_t.stride(0), slots.b_t.stride(1),
        HAS_HOT=has_hot, BLOCK_E=batch.tile_entries, BLOCK_N=block_n, BLOCK_R=block_r,
        PRECISION="ieee" if slots.b_t.dtype == torch.float32 else "tf32",
    )
