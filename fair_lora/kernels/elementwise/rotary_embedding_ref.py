"""Pure-torch reference of the rotary position embedding (neox style: the two halves of a head rotate)."""
import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_embedding_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x · cos[p] + rotate_half(x) · sin[p] for q and k, with the tables rounded to q's dtype first.

    q: [T, H, D]; k: [T, H_kv, D]; cos, sin: [P, D]; positions: [T]. Returns new (q, k)."""
    cos = cos[positions].to(q.dtype)[:, None, :]
    sin = sin[positions].to(q.dtype)[:, None, :]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
