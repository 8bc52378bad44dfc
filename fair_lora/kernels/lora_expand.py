"""Triton expand: y[t_e] += c_e · v[e, :r_s] · B[s_e, :, :r_s]ᵀ for every entry e, float32 accumulate.

A cold token has two entries in different segments (its adapter, +s_i, and the hot subtraction, -s_h), so
two segment programs would write its y row. Instead every row is written by one program, once: the grid
runs over `batch.expand_tiles` (own-adapter entries, and base-model tokens' hot entries), and a program sums
its entries' own term with their hot partners' term (`batch.pair`, all in the one hot slot, so that term is
also one dense tl.dot against a single B_h block) in float32 registers, then does one read-add-write of y.

Why not atomics into a float32 buffer: that needs a memset and a cast-add pass over [T, H_out] (two more
launches per projection, 3x the y traffic) and is not deterministic. For decode (T <= 256, ~100 adapters,
rank 16) the cost is reading each distinct B once (H_out·r per adapter) plus B_h from L2; the grid (tile,
block of H_out) gives ~100 tiles x H_out/128 programs, enough to fill the SMs. For prefill (2k tokens,
few adapters) it is bound by y traffic, read and written once. A slot's rank is read on the device and
bounds the loop over rank blocks, so mixed ranks pad at most one block.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_slots import LoRASlots

BLOCK_R = 16
BLOCK_N = 128


@triton.jit
def _term(
    v_ptr, b_ptr, scale_ptr, ranks_ptr, e, e_ok, slot, n, n_ok, stride_v, stride_b_slot, stride_b_out,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):
    """[BLOCK_E, BLOCK_N] float32: c_e · v[e, :r] · B[slot, n, :r]ᵀ, zero for rows not e_ok."""
    rank = tl.load(ranks_ptr + slot)
    b_rows = b_ptr + slot * stride_b_slot + n[:, None] * stride_b_out
    acc = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < rank
        vs = tl.load(v_ptr + e[:, None] * stride_v + r[None, :], mask=e_ok[:, None] & r_ok[None, :], other=0.0)
        b = tl.load(b_rows + r[None, :], mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        acc += tl.dot(vs.to(b.dtype), tl.trans(b), input_precision=PRECISION)
    return acc * tl.load(scale_ptr + e, mask=e_ok, other=0.0)[:, None]


@triton.jit
def _kernel(
    y_ptr, v_ptr, b_ptr, token_idx_ptr, scale_ptr, pair_ptr, tiles_ptr, ranks_ptr,
    hot_slot, h_out, stride_y, stride_v, stride_b_slot, stride_b_out,
    HAS_HOT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile, n_block = tl.program_id(0), tl.program_id(1)
    first = tl.load(tiles_ptr + tile * 3)
    end = tl.load(tiles_ptr + tile * 3 + 1)
    slot = tl.load(tiles_ptr + tile * 3 + 2).to(tl.int64)
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < end
    n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < h_out
    acc = _term(v_ptr, b_ptr, scale_ptr, ranks_ptr, e, e_ok, slot, n, n_ok, stride_v, stride_b_slot,
                stride_b_out, BLOCK_E, BLOCK_N, BLOCK_R, PRECISION)
    if HAS_HOT:
        p = tl.load(pair_ptr + e, mask=e_ok, other=-1)
        acc += _term(v_ptr, b_ptr, scale_ptr, ranks_ptr, p, p >= 0, hot_slot.to(tl.int64), n, n_ok, stride_v,
                     stride_b_slot, stride_b_out, BLOCK_E, BLOCK_N, BLOCK_R, PRECISION)
    t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
    y_tile = y_ptr + t[:, None] * stride_y + n[None, :]
    mask = e_ok[:, None] & n_ok[None, :]
    y = tl.load(y_tile, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_tile, (y + acc).to(y_ptr.dtype.element_ty), mask=mask)


def lora_expand(y: torch.Tensor, v: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> None:
    """y: [T, H_out] float32/bf16/fp16 (rows may be strided), updated in place; v: [E, R] float32 from the
    shrink; slots.b: [S, H_out, R] contiguous. Rows of tokens without entries are left untouched."""
    num_slots, h_out, max_rank = slots.b.shape
    assert y.dim() == 2 and y.shape == (batch.num_tokens, h_out), f"y {tuple(y.shape)} vs B {tuple(slots.b.shape)}"
    assert v.shape == (batch.num_entries, max_rank) and v.dtype == torch.float32 and v.is_contiguous()
    assert y.stride(1) == 1 and slots.b.is_contiguous(), "y rows and B must be contiguous"
    assert y.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported y dtype {y.dtype}"
    assert slots.ranks.dtype == torch.int32 and slots.ranks.shape == (num_slots,)
    assert batch.token_idx.device == y.device == v.device == slots.b.device == batch.expand_tiles.device
    has_hot = batch.hot_slot is not None
    grid = (batch.expand_tiles.shape[0], triton.cdiv(h_out, BLOCK_N))
    _kernel[grid](
        y, v, slots.b, batch.token_idx, batch.scale, batch.pair, batch.expand_tiles, slots.ranks,
        batch.hot_slot if has_hot else 0, h_out, y.stride(0), v.stride(0), slots.b.stride(0), slots.b.stride(1),
        HAS_HOT=has_hot, BLOCK_E=batch.tile_entries, BLOCK_N=BLOCK_N, BLOCK_R=BLOCK_R,
        PRECISION="ieee" if slots.b.dtype == torch.float32 else "tf32",
    )
