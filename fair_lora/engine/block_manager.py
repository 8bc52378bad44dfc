"""Paged KV cache bookkeeping: fixed-size blocks handed to sequences on demand and taken back on finish."""
from collections import deque

from fair_lora.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def needed(self, seq: Sequence, num_new: int) -> int:
        """Extra blocks `seq` needs to hold `num_new` more computed tokens."""
        return max(0, self.blocks_for(seq.num_computed + num_new) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new: int) -> bool:
        return self.needed(seq, num_new) <= self.num_free

    def allocate(self, seq: Sequence, num_new: int) -> None:
        for _ in range(self.needed(seq, num_new)):
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
