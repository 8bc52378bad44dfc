"""Pure-torch reference of the fused residual add + RMSNorm, in transformers' op order (bit-equal on the CPU)."""
import torch


def fused_add_rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (x itself when residual is None); returns (weight · h · rsqrt(mean(h²) + eps), h).

    x, residual: [T, H]; weight: [H]. The add is the decoder layer's residual add and the rest LlamaRMSNorm
    op for op (float32 mean and rsqrt, rounded to the dtype before the weight), so float32 matches transformers."""
    h = x if residual is None else x + residual
    hf = h.float()
    normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(h.dtype), h
