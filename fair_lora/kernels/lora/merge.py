"""Triton hot merge: W' = W + s·B·A written in one pass over W (read W, write W'), float32 accumulate.

The merge is memory-bound (rank 16 adds 32 FLOPs per element), so its floor is one read of the pristine W and
one write of W'. cuBLAS's addmm with K = r reaches about a third of the copy bandwidth: its tiles are shaped
for reuse along K, which a rank-16 product does not have. Here each program streams one [BLOCK_M, BLOCK_N] tile
of W: it loads the r rows of Bᵀ and A that tile needs (tiny, L2-resident), forms the product with one tl.dot and
adds it to W in float32, rounding once. (cuBLAS's bf16 addmm rounds s·B·A to bf16 before the add: up to 256
ulps off the exact W' where W and s·B·A nearly cancel; this kernel stays within the float32 accumulation error.)
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.dot_precision import dot_precision

BLOCK_M = 16  # tile of W per program: 16 x 256 streamed best of the tiles swept (benchmarks/ops/merge.py)
BLOCK_N = 256


@triton.jit
def _merge_kernel(
    out_ptr, w_ptr, b_t_ptr, a_ptr, scale, h_out, h_in, rank,
    stride_out, stride_w, stride_b, stride_a,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_R)
    rows_ok, cols_ok, r_ok = rows < h_out, cols < h_in, r < rank
    b_t = tl.load(b_t_ptr + r[:, None] * stride_b + rows[None, :], mask=r_ok[:, None] & rows_ok[None, :], other=0.0)
    a = tl.load(a_ptr + r[:, None] * stride_a + cols[None, :], mask=r_ok[:, None] & cols_ok[None, :], other=0.0)
    # float32 operands: tf32 holds bf16/fp16 exactly, and float32 weights get exact products (dot_precision.py)
    delta = tl.dot(tl.trans(b_t.to(tl.float32)), a.to(tl.float32), input_precision=PRECISION)
    mask = rows_ok[:, None] & cols_ok[None, :]
    w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)
    merged = w.to(tl.float32) + scale * delta
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], merged.to(out_ptr.dtype.element_ty), mask=mask)


def lora_merge(out: torch.Tensor, w: torch.Tensor, b_t: torch.Tensor, a: torch.Tensor, scale: float) -> None:
    """out, w: [H_out, H_in], rows contiguous, same dtype; b_t: [r, H_out]; a: [r, H_in]; r <= 128."""
    h_out, h_in = w.shape
    rank = a.shape[0]
    assert out.shape == w.shape and out.dtype == w.dtype and b_t.shape == (rank, h_out) and a.shape[1] == h_in
    assert out.stride(1) == w.stride(1) == b_t.stride(1) == a.stride(1) == 1, "rows must be contiguous"
    assert a.dtype == b_t.dtype == w.dtype and 0 < rank <= 128
    grid = (triton.cdiv(h_out, BLOCK_M), triton.cdiv(h_in, BLOCK_N))
    _merge_kernel[grid](
        out, w, b_t, a, float(scale), h_out, h_in, rank,
        out.stride(0), w.stride(0), b_t.stride(0), a.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_R=max(16, triton.next_power_of_2(rank)),
        PRECISION=dot_precision(w.dtype),
    )
