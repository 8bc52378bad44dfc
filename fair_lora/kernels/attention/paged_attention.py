"""Public attention ops over the paged KV cache; layers call these, never a backend directly.

They pick the Triton kernels for CUDA tensors, and the torch reference elsewhere; FAIR_LORA_TRITON=1 forces
Triton for CPU tensors too (with TRITON_INTERPRET=1), which is how the CPU tests exercise this dispatch.
Decode-only batches go to the split-K decode kernel, any batch with a multi-token sequence to the tiled
prefill kernel.
"""
import torch

from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.dispatch import use_triton
from fair_lora.kernels.attention.paged_attention_ref import paged_attention_ref, write_kv_cache_ref


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store this step's keys and values: k, v: [T, H_kv, D] into caches [num_blocks, block_size, H_kv, D] at
    slot_mapping: [T] int64. The Triton path skips negative slots (padding rows of a captured graph)."""
    if use_triton(k):
        from fair_lora.kernels.attention.kv_cache_write import kv_cache_write

        kv_cache_write(k, v, k_cache, v_cache, slot_mapping)
        return
    write_kv_cache_ref(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of q: [T, H, D] over each sequence's cached context; returns [T, H, D]."""
    if not use_triton(q):
        return paged_attention_ref(q, k_cache, v_cache, meta, scale)
    if meta.decode_only:
        from fair_lora.kernels.attention.decode import paged_decode_attention

        return paged_decode_attention(q, k_cache, v_cache, meta, scale)
    from fair_lora.kernels.attention.prefill import prefill_attention

    return prefill_attention(q, k_cache, v_cache, meta, scale)
