"""One projection's adapter slots: the device-resident A and B of every pooled adapter, zero-padded to R."""
from dataclasses import dataclass, field

import torch


@dataclass
class LoRASlots:
    a: torch.Tensor  # [S, R, H_in]; rows past a slot's rank are zero
    b_t: torch.Tensor  # [S, R, H_out], B transposed so the expand reads along H_out; rows past the rank are zero
    ranks: torch.Tensor  # [S] int32 on the device: a slot's rank for this projection, 0 if not targeted
    ranks_host: list[int] = field(default_factory=list)  # the same, on the host: loop bounds without a sync

    @property
    def b(self) -> torch.Tensor:
        """[S, H_out, R] view of B; columns past a slot's rank are zero."""
        return self.b_t.transpose(1, 2)

    @classmethod
    def empty(cls, num_slots: int, max_rank: int, h_in: int, h_out: int, dtype: torch.dtype, device) -> "LoRASlots":
        return cls(
            a=torch.zeros(num_slots, max_rank, h_in, dtype=dtype, device=device),
            b_t=torch.zeros(num_slots, max_rank, h_out, dtype=dtype, device=device),
            ranks=torch.zeros(num_slots, dtype=torch.int32, device=device),
            ranks_host=[0] * num_slots,
        )

    def write(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's A [r, H_in] and B [H_out, r] in `slot`; None clears it (projection not targeted)."""
        self.a[slot].zero_()
        self.b_t[slot].zero_()
        r = 0 if a is None else a.shape[0]
        if r:
            self.a[slot, :r].copy_(a)
            self.b_t[slot, :r].copy_(b.t())
        self.ranks[slot] = r
        self.ranks_host[slot] = r
