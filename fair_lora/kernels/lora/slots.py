"""The device-resident A and B of every pooled adapter for a group of projections that read the same input
(q/k/v, or gate/up, or a single projection): one shrink and one expand launch serve the whole group.

Sub-projection j of n owns rows j·R:(j+1)·R of A and columns off_j:off_j+H_j of Bᵀ, so the group's A is the
sub-projections' A stacked along the rank (the shrink's v has n·R columns) and its Bᵀ their Bᵀ side by side
along H_out, matching the fused projection's output [T, ΣH_j]. `sub(j)` is a view of one sub-projection,
through which adapters are written and merged."""
from dataclasses import dataclass, field

import torch

RANK_ALIGN = 16  # R is padded to the kernels' rank block, so a rank block never straddles two sub-projections


@dataclass
class LoRASlots:
    a: torch.Tensor  # [S, n·R, H_in]; rows past a slot's rank in each sub-projection are zero
    b_t: torch.Tensor  # [S, R, ΣH_out], B transposed so the expand reads along H_out; rows past the rank are zero
    ranks: torch.Tensor  # [n, S] int32 on the device: a slot's rank per sub-projection, 0 if not targeted
    ranks_host: list[list[int]] = field(default_factory=list)  # the same, on the host: loop bounds without a sync
    out_sizes: tuple[int, ...] = ()  # H_out of each sub-projection

    def __post_init__(self) -> None:
        if not self.out_sizes:
            self.out_sizes = (self.b_t.shape[2],)
        assert self.ranks.dim() == 2 and len(self.ranks_host) == self.ranks.shape[0] == len(self.out_sizes)
        assert self.a.shape[1] == self.rank_width * len(self.out_sizes) and sum(self.out_sizes) == self.b_t.shape[2]

    @property
    def rank_width(self) -> int:
        """R: the rank columns each sub-projection owns in the shrink's output."""
        return self.b_t.shape[1]

    @property
    def out_offsets(self) -> tuple[int, ...]:
        offsets = [0]
        for size in self.out_sizes:
            offsets.append(offsets[-1] + size)
        return tuple(offsets)

    @property
    def b(self) -> torch.Tensor:
        """[S, ΣH_out, R] view of B; columns past a slot's rank are zero."""
        return self.b_t.transpose(1, 2)

    @classmethod
    def empty(
        cls, num_slots: int, max_rank: int, h_in: int, h_out: int | tuple[int, ...], dtype: torch.dtype, device
    ) -> "LoRASlots":
        out_sizes = (h_out,) if isinstance(h_out, int) else tuple(h_out)
        r, n = -(-max_rank // RANK_ALIGN) * RANK_ALIGN, len(out_sizes)
        return cls(
            a=torch.zeros(num_slots, n * r, h_in, dtype=dtype, device=device),
            b_t=torch.zeros(num_slots, r, sum(out_sizes), dtype=dtype, device=device),
            ranks=torch.zeros(n, num_slots, dtype=torch.int32, device=device),
            ranks_host=[[0] * num_slots for _ in range(n)],
            out_sizes=out_sizes,
        )

    def sub(self, j: int) -> "LoRASlots":
        """Sub-projection j alone, as views: writing through it writes the group."""
        r, (lo, hi) = self.rank_width, self.out_offsets[j : j + 2]
        return LoRASlots(self.a[:, j * r : (j + 1) * r], self.b_t[:, :, lo:hi], self.ranks[j : j + 1],
                         [self.ranks_host[j]], (hi - lo,))

    def write(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, non_blocking: bool = False) -> None:
        """Put one adapter's A [r, H_in] and B [H_out, r] in `slot` of a single projection (a group's `sub`);
        None clears it (projection not targeted). non_blocking: asynchronous copies from pinned host memory.
        Rows past a slot's rank are always zero, so only those an earlier, larger rank used are cleared, and the
        device's rank is written only when it changes: fewer launches when a slot is reloaded (a cold load)."""
        assert len(self.out_sizes) == 1, "write through sub(j)"
        r, old = (0 if a is None else a.shape[0]), self.ranks_host[0][slot]
        if old > r:
            self.a[slot, r:old].zero_()
            self.b_t[slot, r:old].zero_()
        if r:
            self.a[slot, :r].copy_(a, non_blocking=non_blocking)
            self.b_t[slot, :r].copy_(b.t(), non_blocking=non_blocking)
        if old != r:
            self.ranks[0, slot] = r
            self.ranks_host[0][slot] = r
