"""Triton silu(gate) · up of the gated MLP, one launch instead of silu and mul kernels and their round trip.

Grid (token, column block): a program computes BLOCK columns of one row in float32. Like torch's
F.silu(gate) * up in the dtype, silu rounds to the dtype before the product, which rounds again. gate and up
may be strided rows, e.g. the two halves of one fused [T, 2·I] gate_up projection.
"""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    gate_ptr, up_ptr, out_ptr, width, stride_gate, stride_up, stride_out, BLOCK: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_ptr + tok * stride_gate + cols, mask=mask, other=0.0)
    up = tl.load(up_ptr + tok * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + tok * stride_out + cols, (silu * up).to(gate.dtype), mask=mask)


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out = silu(gate) · up. gate, up, out: [T, I], rows of stride 1, one dtype. Returns out (allocated when not
    given), every element written."""
    num_tokens, width = gate.shape
    out = torch.empty(num_tokens, width, dtype=gate.dtype, device=gate.device) if out is None else out
    assert up.shape == out.shape == gate.shape, f"gate {tuple(gate.shape)}, up {tuple(up.shape)}, out {out.shape}"
    assert up.dtype == out.dtype == gate.dtype, f"gate is {gate.dtype}, up {up.dtype}, out {out.dtype}"
    assert gate.stride(1) == up.stride(1) == out.stride(1) == 1, "rows must be contiguous"
    if num_tokens == 0:
        return out
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(width, BLOCK))](
        gate, up, out, width, gate.stride(0), up.stride(0), out.stride(0), BLOCK=BLOCK, num_warps=4,
    )
    return out
