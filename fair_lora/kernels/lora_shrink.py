"""Triton shrink: v[e, :r_s] = x[t_e] · A[s_e, :r_s]ᵀ for every entry e, float32 accumulate (SGMV-style).

Grid (rank block, tile): a tile is a run of at most `batch.tile_entries` entries of one slot, so a program
reads one adapter's A block once for all its entries while it gathers their rows of x. The rank block is the
fastest grid axis, so the programs of one tile run side by side and re-read its x rows from L2, not HBM.
A slot's rank is read on the device (`slots.ranks`), so the launch needs no host sync: rank blocks past it
only write zeros, and rank-0 slots (projection not targeted) cost a store of zeros and nothing else.
The grid depends on the batch only through the host-side tile count.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.kernels.lora_slots import LoRASlots

BLOCK_R = 16  # the smallest tl.dot width; mixed ranks pad at most one such block of work
BLOCK_K = 128


@triton.jit
def _kernel(
    x_ptr, a_ptr, v_ptr, token_idx_ptr, tiles_ptr, ranks_ptr,
    h_in, max_rank, stride_x, stride_a_slot, stride_a_rank, stride_v,
    BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    r_block, tile = tl.program_id(0), tl.program_id(1)
    first = tl.load(tiles_ptr + tile * 3)
    end = tl.load(tiles_ptr + tile * 3 + 1)
    slot = tl.load(tiles_ptr + tile * 3 + 2).to(tl.int64)
    rank = tl.load(ranks_ptr + slot)
    e = first + tl.arange(0, BLOCK_E)
    e_ok = e < end
    r = r_block * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_E, BLOCK_R), dtype=tl.float32)
    if r_block * BLOCK_R < rank:
        t = tl.load(token_idx_ptr + e, mask=e_ok, other=0)
        r_ok = r < rank
        x_rows = x_ptr + t[:, None] * stride_x
        a_rows = a_ptr + slot * stride_a_slot + r[:, None] * stride_a_rank
        for k0 in range(0, h_in, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < h_in
            xs = tl.load(x_rows + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
            a = tl.load(a_rows + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(xs, tl.trans(a), input_precision=PRECISION)
    tl.store(v_ptr + e[:, None] * stride_v + r[None, :], acc, mask=e_ok[:, None] & (r[None, :] < max_rank))


def lora_shrink(x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> torch.Tensor:
    """x: [T, H_in] (rows may be strided); slots.a: [S, R, H_in] contiguous, same dtype as x.
    Returns v: [E, R] float32, every element written; columns past an entry's rank are zero."""
    num_slots, max_rank, h_in = slots.a.shape
    assert x.dim() == 2 and x.shape == (batch.num_tokens, h_in), f"x {tuple(x.shape)} vs A {tuple(slots.a.shape)}"
    assert x.stride(1) == 1 and slots.a.is_contiguous(), "x rows and A must be contiguous"
    assert x.dtype == slots.a.dtype, f"x is {x.dtype} but A is {slots.a.dtype}"
    assert slots.ranks.dtype == torch.int32 and slots.ranks.shape == (num_slots,)
    assert batch.token_idx.device == x.device == slots.a.device == batch.shrink_tiles.device
    v = torch.empty(batch.num_entries, max_rank, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(max_rank, BLOCK_R), batch.shrink_tiles.shape[0])
    _kernel[grid](
        x, slots.a, v, batch.token_idx, batch.shrink_tiles, slots.ranks,
        h_in, max_rank, x.stride(0), slots.a.stride(0), slots.a.stride(1), v.stride(0),
        BLOCK_E=batch.tile_entries, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, PRECISION=_precision(x.dtype),
    )
    return v


def _precision(dtype: torch.dtype) -> str:
    """float32 models are the fidelity reference: keep their products exact rather than tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"
