"""Triton KV cache write: k_cache.view(-1, H_kv, D)[slot[t]] = k[t], and the same for v, in one launch.

Grid (token,): a program copies one token's keys and values, all kv heads. A negative slot is skipped, so
the padding rows of a captured decode graph can point at slot -1 instead of clobbering a real cache slot.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, num_kv_heads, head_dim,
    stride_k_tok, stride_k_head, stride_v_tok, stride_v_head, stride_c_slot, stride_c_head,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + tok)
    if slot >= 0:
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        mask = (h < num_kv_heads)[:, None] & (d < head_dim)[None, :]
        dst = slot * stride_c_slot + h[:, None] * stride_c_head + d[None, :]
        k = tl.load(k_ptr + tok * stride_k_tok + h[:, None] * stride_k_head + d[None, :], mask=mask)
        v = tl.load(v_ptr + tok * stride_v_tok + h[:, None] * stride_v_head + d[None, :], mask=mask)
        tl.store(k_cache_ptr + dst, k, mask=mask)
        tl.store(v_cache_ptr + dst, v, mask=mask)


def kv_cache_write(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k_cache.view(-1, H_kv, D)[slot_mapping[t]] = k[t] (and v) for every t with slot_mapping[t] >= 0.

    k, v: [T, H_kv, D], rows of stride 1; k_cache, v_cache: [num_blocks, block_size, H_kv, D] contiguous,
    k's dtype; slot_mapping: [T] int64, block · block_size + offset, or negative to skip the token."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and k_cache.shape == v_cache.shape and k_cache.shape[2:] == (num_kv_heads, head_dim)
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k.stride(2) == v.stride(2) == 1
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, f"k is {k.dtype}, caches are {k_cache.dtype}"
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype == torch.int64
    if num_tokens == 0:
        return
    _kv_write_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, num_kv_heads, head_dim,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(1), k_cache.stride(2),
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
    )
