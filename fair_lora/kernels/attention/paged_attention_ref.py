"""Pure-torch reference of causal attention over a paged KV cache, for any mix of prefill and decode."""
import torch
import torch.nn.functional as F

from fair_lora.kernels.attention.metadata import AttentionMetadata


def write_kv_cache_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v: [T, H_kv, D]; k_cache, v_cache: [num_blocks, block_size, H_kv, D]; slot_mapping: [T]."""
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v


def paged_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """out[t] = softmax(q[t]·Kᵀ·scale, causal)·V over sequence b's cached keys 0..pos(t).

    q: [T, H, D]; caches: [num_blocks, block_size, H_kv, D] (GQA: H a multiple of H_kv). Returns [T, H, D].
    A sequence's new tokens are the last ones of its context, so row j of n new tokens sits at
    position context_len - n + j."""
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    for b in range(meta.num_seqs):
        lo, hi = meta.query_start_host[b], meta.query_start_host[b + 1]
        n, ctx = hi - lo, meta.context_lens_host[b]
        blocks = meta.block_tables[b, : (ctx + block_size - 1) // block_size].long()
        keys = k_cache[blocks].flatten(0, 1)[:ctx].transpose(0, 1)  # [H_kv, ctx, D]
        values = v_cache[blocks].flatten(0, 1)[:ctx].transpose(0, 1)
        query = q[lo:hi].transpose(0, 1)  # [H, n, D]
        visible = torch.arange(ctx, device=q.device)[None, :] <= torch.arange(ctx - n, ctx, device=q.device)[:, None]
        out[lo:hi] = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=scale, enable_gqa=True
        ).transpose(0, 1)
    return out
