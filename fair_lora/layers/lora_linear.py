import torch
from torch import nn

from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.correction import linear_with_correction
from fair_lora.kernels.lora.slots import LoRASlots


class LoRALinear(nn.Module):
    """A base projection whose weight may hold the merged hot adapter, plus the correction for every other
    adapter's tokens. `slots` is attached by the adapter pool when the projection can be targeted."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.slots: LoRASlots | None = None

    def forward(self, x: torch.Tensor, lora: LoRABatch) -> torch.Tensor:
        return linear_with_correction(x, self.weight, self.bias, self.slots, lora)
