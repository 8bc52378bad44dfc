"""Public attention ops over the paged KV cache; layers call these, never a backend directly."""
import torch

from fair_lora.kernels.attention_metadata import AttentionMetadata
from fair_lora.kernels.paged_attention_ref import paged_attention_ref, write_kv_cache_ref


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store this step's keys and values: k, v: [T, H_kv, D] into caches [num_blocks, block_size, H_kv, D]."""
    write_kv_cache_ref(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of q: [T, H, D] over each sequence's cached context; returns [T, H, D]."""
    return paged_attention_ref(q, k_cache, v_cache, meta, scale)
