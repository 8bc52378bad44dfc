import torch
from torch import nn

from fair_lora.kernels.elementwise.ops import apply_rotary


class RotaryEmbedding(nn.Module):
    """Rotary position embedding from a precomputed table; inv_freq and scaling come from the model config
    (transformers' rope initialisers), so linear, llama3 and yarn scaling behave as in transformers."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float, max_positions: int) -> None:
        super().__init__()
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, D]
        self.register_buffer("cos", emb.cos() * attention_scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * attention_scaling, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T]; q: [T, H, D]; k: [T, H_kv, D]."""
        return apply_rotary(q, k, self.cos, self.sin, positions)
