"""Pure-torch reference of the gated MLP's activation: silu(gate) · up, in the model dtype."""
import torch
import torch.nn.functional as F


def silu_and_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [T, I]. Returns silu(gate) · up: [T, I]; silu rounds to the dtype before the product."""
    return F.silu(gate) * up
