"""Everything one forward needs besides the token ids and positions, passed explicitly to every layer."""
from dataclasses import dataclass

import torch

from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.lora.batch import LoRABatch


@dataclass(frozen=True)
class ForwardBatch:
    attn: AttentionMetadata
    lora: LoRABatch
    logits_rows: torch.Tensor  # [B_sample] int64, token rows whose next-token logits are needed
