"""Public fused elementwise ops of the decoder layer (residual add + RMSNorm, rotary, SiLU·up); layers call
these, never a backend directly.

They pick the Triton kernels for CUDA tensors, where they replace dozens of tiny torch kernels per layer, and
the torch reference elsewhere, whose float32 results are bit-equal to transformers' (the CPU fidelity tests
rely on it); FAIR_LORA_TRITON=1 forces Triton for CPU tensors too (with TRITON_INTERPRET=1).
"""
import torch

from fair_lora.kernels.dispatch import use_triton
from fair_lora.kernels.elementwise.rms_norm_ref import fused_add_rms_norm_ref
from fair_lora.kernels.elementwise.rotary_embedding_ref import rotary_embedding_ref
from fair_lora.kernels.elementwise.silu_and_mul_ref import silu_and_mul_ref


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (x itself when residual is None); returns (weight · h · rsqrt(mean(h²) + eps), h).

    x, residual: [T, H]; weight: [H]. The Triton path stores h into `residual`, so a caller hands its residual
    over and keeps the returned h instead."""
    if use_triton(x):
        from fair_lora.kernels.elementwise.rms_norm import fused_add_rms_norm

        return fused_add_rms_norm(x, weight, eps, residual)
    return fused_add_rms_norm_ref(x, weight, eps, residual)


def gated_silu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up; gate, up: [T, I] (may be the two halves of one [T, 2·I] projection). Returns [T, I]."""
    if use_triton(gate):
        from fair_lora.kernels.elementwise.silu_and_mul import silu_and_mul

        return silu_and_mul(gate, up)
    return silu_and_mul_ref(gate, up)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q: [T, H, D] and k: [T, H_kv, D] at positions: [T], from the tables cos, sin: [P, D].
    Returns new (q, k)."""
    if use_triton(q):
        from fair_lora.kernels.elementwise.rotary_embedding import rotary_embedding

        return rotary_embedding(q, k, cos, sin, positions)
    return rotary_embedding_ref(q, k, cos, sin, positions)
