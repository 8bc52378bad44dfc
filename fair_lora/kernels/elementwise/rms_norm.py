"""Triton fused residual add + RMSNorm: h = x + residual, out = weight · h · rsqrt(mean(h²) + eps), one launch.

Grid (token,): a program holds its whole row in registers (BLOCK_H: H rounded up to a power of two), so x and
residual are read once, h is written back into the residual and the norm into `out`. The roundings are the
reference's (torch's dtype ops and LlamaRMSNorm): h rounds to the dtype before it is squared, the mean and
rsqrt are float32, h·rsqrt rounds to the dtype before the weight product, which rounds again. The order of
the row sum (and on the GPU the approximate rsqrt) differ from torch, so float32 agrees to about an ulp, not
bit for bit.
"""
import torch
import triton
import triton.language as tl

from fair_lora.kernels.attention.common import reduce_sum  # tl.sum, but also under the CPU interpreter


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, hidden, eps, stride_x, stride_r, stride_out,
    HAS_RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    h = tl.load(x_ptr + tok * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + tok * stride_r + cols, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
        tl.store(residual_ptr + tok * stride_r + cols, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.math.rsqrt(reduce_sum(hf * hf, 0) / hidden + eps)
    normed = (hf * rstd).to(h.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + tok * stride_out + cols, (w * normed).to(h.dtype), mask=mask)


def fused_add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual, stored into `residual` (h is x itself when residual is None);
    out = weight · h · rsqrt(mean(h²) + eps). Returns (out, h).

    x, residual, out: [T, H], rows of stride 1, one dtype, three different buffers; weight: [H] contiguous,
    x's dtype. out is allocated when not given; every element of it is written."""
    num_tokens, hidden = x.shape
    assert weight.shape == (hidden,) and weight.is_contiguous(), f"weight {tuple(weight.shape)} for H={hidden}"
    assert weight.dtype == x.dtype, f"x is {x.dtype} but weight is {weight.dtype}"
    h = x if residual is None else residual
    out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=x.device) if out is None else out
    assert h.shape == out.shape == x.shape and h.dtype == out.dtype == x.dtype
    assert x.stride(1) == h.stride(1) == out.stride(1) == 1, "rows must be contiguous"
    if num_tokens == 0:
        return out, h
    block = triton.next_power_of_2(hidden)
    _add_rms_norm_kernel[(num_tokens,)](
        x, h, weight, out, hidden, eps, x.stride(0), h.stride(0), out.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK_H=block, num_warps=min(max(block // 512, 1), 16),
    )
    return out, h
