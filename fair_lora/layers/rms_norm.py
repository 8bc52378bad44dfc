import torch
from torch import nn

from fair_lora.kernels.elementwise.ops import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, H]. Returns (norm(h), h) with h = x + residual, or x when there is no residual yet:
        the residual add rides along with the norm, one kernel on the GPU. `residual` is consumed."""
        return rms_norm(x, self.weight, self.eps, residual)
