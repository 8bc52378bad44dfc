"""One projection's adapter slots: the device-resident A and B of every pooled adapter, zero-padded to R."""
from dataclasses import dataclass, field

import torch


@dataclass
class LoRASlots:
    a: torch.Tensor  # [S, R, H_in]; rows past a slot's rank are zero
    b: torch.Tensor  # [S, H_out, R]; columns past a slot's rank are zero
    ranks: torch.Tensor  # [S] int32 on the device: a slot's rank for this projection, 0 if not targeted
    ranks_host: list[int] = field(default_factory=list)  # the same, on the host: loop bounds without a sync

    @classmethod
    def empty(cls, num_slots: int, max_rank: int, h_in: int, h_out: int, dtype: torch.dtype, device) -> "LoRASlots":
        return cls(
            a=torch.zeros(num_slots, max_rank, h_in, dtype=dtype, device=device),
            b=torch.zeros(num_slots, h_out, max_rank, dtype=dtype, device=device),
            ranks=torch.zeros(num_slots, dtype=torch.int32, device=device),
            ranks_host=[0] * num_slots,
        )

    def write(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's A [r, H_in] and B [H_out, r] in `slot`; None clears it (projection not targeted)."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        r = 0 if a is None else a.shape[0]
        if r:
            self.a[slot, :r].copy_(a)
            self.b[slot, :, :r].copy_(b)
        self.ranks[slot] = r
        self.ranks_host[slot] = r
