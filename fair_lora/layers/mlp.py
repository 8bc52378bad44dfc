import torch
from torch import nn

from fair_lora.kernels.elementwise import gated_silu
from fair_lora.kernels.lora_batch import LoRABatch
from fair_lora.layers.lora_linear import LoRALinear


class GatedMLP(nn.Module):
    """down(silu(gate(x)) · up(x)), every projection LoRA-aware."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = LoRALinear(hidden, intermediate)
        self.up_proj = LoRALinear(hidden, intermediate)
        self.down_proj = LoRALinear(intermediate, hidden)

    def forward(self, x: torch.Tensor, lora: LoRABatch) -> torch.Tensor:
        return self.down_proj(gated_silu(self.gate_proj(x, lora), self.up_proj(x, lora)), lora)
