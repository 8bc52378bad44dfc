"""Where each sequence of a mixed prefill/decode batch reads and writes the paged KV cache."""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64, cache slot (block · block_size + offset) of each new token's k/v
    query_start: torch.Tensor  # [B+1] int32, sequence b's new tokens are rows query_start[b]:query_start[b+1]
    context_lens: torch.Tensor  # [B] int32, tokens in sequence b's cache once this step's are written
    block_tables: torch.Tensor  # [B, max_blocks] int32, physical blocks of each sequence (-1 padding)
    query_start_host: tuple[int, ...]  # host copies: loop bounds without a device sync
    context_lens_host: tuple[int, ...]
    max_query_len: int

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_host)

    @property
    def decode_only(self) -> bool:
        return self.max_query_len == 1
