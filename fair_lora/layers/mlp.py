import torch
from torch import nn

from fair_lora.kernels.elementwise.ops import gated_silu
from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.layers.fused_projection import FusedProjection
from fair_lora.layers.lora_linear import LoRALinear


class GatedMLP(nn.Module):
    """down(silu(gate(x)) · up(x)), every projection LoRA-aware, gate and up one fused GEMM."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = LoRALinear(hidden, intermediate)
        self.up_proj = LoRALinear(hidden, intermediate)
        self.down_proj = LoRALinear(intermediate, hidden)
        self.gate_up = FusedProjection(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor, lora: LoRABatch) -> torch.Tensor:
        return self.down_proj(gated_silu(*self.gate_up(x, lora)), lora)
