"""Projections of the same input (q/k/v, gate/up) as one GEMM over their stacked weights and one correction.

The member LoRALinears keep their module paths, so checkpoints, PEFT adapter keys, the adapter pool and the
hot merge address them as before; after loading, their weights become row views of the stacked weight, so
writing a member's weight (a merge, a restore) writes the fused one. This turns three GEMMs into one and, with
the correction's group launches, 14 correction launches per layer into 8.
"""
from dataclasses import dataclass

import torch
from torch import nn

from fair_lora.kernels.lora.batch import LoRABatch
from fair_lora.kernels.lora.correction import linear_with_correction
from fair_lora.kernels.lora.slots import LoRASlots
from fair_lora.layers.lora_linear import LoRALinear


class FusedProjection(nn.Module):
    def __init__(self, *parts: LoRALinear) -> None:
        super().__init__()
        assert len({p.in_features for p in parts}) == 1, "fused projections must share their input"
        self.parts = tuple(parts)  # a plain tuple, not submodules: the members stay where their names say
        self.sizes = tuple(p.out_features for p in parts)
        self.weight: torch.Tensor | None = None  # [ΣH_out, H_in] once fuse() ran
        self.bias: torch.Tensor | None = None
        self.slots: LoRASlots | None = None  # the group's adapter slots, attached by the adapter pool

    @torch.no_grad()
    def fuse(self) -> None:
        """Stack the members' loaded weights (and biases) and make theirs row views of the stack."""
        self.weight = torch.cat([p.weight.detach() for p in self.parts])
        with_bias = [p.bias is not None for p in self.parts]
        assert all(with_bias) or not any(with_bias), "either every member has a bias or none"
        self.bias = torch.cat([p.bias.detach() for p in self.parts]) if all(with_bias) else None
        start = 0
        for p, size in zip(self.parts, self.sizes):
            p.weight = nn.Parameter(self.weight[start : start + size], requires_grad=False)
            if self.bias is not None:
                p.bias = nn.Parameter(self.bias[start : start + size], requires_grad=False)
            start += size

    def forward(self, x: torch.Tensor, lora: LoRABatch) -> tuple[torch.Tensor, ...]:
        """Each member's output, as column views of one [T, ΣH_out] result."""
        assert self.weight is not None, "fuse() after the weights are loaded"
        y = linear_with_correction(x, self.weight, self.bias, self.slots, lora)
        return y.split(self.sizes, dim=-1)


@dataclass
class LoRAGroup:
    """Projections whose correction runs as one: `runner` applies it (a FusedProjection, or the one
    LoRALinear), `members` are its projections by module path, in the order of the runner's output."""
    runner: nn.Module
    members: dict[str, LoRALinear]
