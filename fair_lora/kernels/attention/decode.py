"""Triton paged decode attention: out[b, h] = softmax(q[b, h]·K_bᵀ·scale)·V_b over sequence b's whole cache.

Flash-decoding. Grid (sequence, kv head, split): a program reads one kv head's keys and values once for all
`group` query heads that share them (GQA; the group is padded to the 16 rows of the smallest tl.dot), over
one contiguous 1/num_splits share of the sequence's context, with an online softmax in float32. With one
split the program normalizes and writes `out` itself; with more, it writes its normalized partial output
and log-sum-exp, and `_decode_reduce_kernel` merges the splits of each (sequence, head).

Each sequence's share is computed on the device from its context length, so short and long sequences of one
batch both spread over all splits. The number of splits depends only on shapes (batch size, kv heads, block
table width): the launch needs no host sync and, with a padded batch and a fixed block table width, has a
fixed grid, as a CUDA graph needs. A sequence of context length 0 (graph padding) gets zeros.
"""
import functools

import torch
import triton
import triton.language as tl

from fair_lora.kernels.attention.common import BOUNDS, LOG2E, attend, reduce_max, reduce_sum
from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.dot_precision import dot_precision, dot_upcast

MIN_SPLIT_TOKENS = 128  # a split shorter than this costs more in its reduction than its parallelism saves
MAX_SPLITS = 64


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    scale_log2, head_dim, block_size, num_splits,
    stride_q_seq, stride_q_head, stride_c_block, stride_c_slot, stride_c_head, stride_table, stride_o_seq,
    stride_o_head,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ctx = tl.load(context_lens_ptr + seq)
    share = ((ctx + num_splits - 1) // num_splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = split * share
    end = tl.minimum(start + share, ctx)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_ok, d_ok = g < GROUP, d < head_dim
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l = tl.full((BLOCK_G,), 0.0, tl.float32)
    acc = tl.full((BLOCK_G, BLOCK_D), 0.0, tl.float32)
    m, l, acc = attend(q, m, l, acc, k_cache_ptr, v_cache_ptr, table, kv_head, g, start, end, block_size,
                       stride_c_block, stride_c_slot, stride_c_head, scale_log2, d, d_ok,
                       BLOCK_N, BOUNDS, UPCAST, PRECISION)
    has_keys = l > 0.0
    acc = acc / tl.where(has_keys, l, 1.0)[:, None]
    if SPLIT:
        part = (seq * tl.num_programs(1) * GROUP + heads) * num_splits + split
        tl.store(part_out_ptr + part[:, None] * BLOCK_D + d[None, :], acc, mask=g_ok[:, None])
        lse = tl.where(has_keys, m + tl.log2(tl.where(has_keys, l, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + part, lse, mask=g_ok)
    else:
        out = out_ptr + seq * stride_o_seq + heads[:, None] * stride_o_head + d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, head_dim, num_splits, stride_o_seq, stride_o_head,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq, head = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < num_splits
    part = (seq * tl.num_programs(1) + head) * num_splits + s
    lse = tl.load(part_lse_ptr + part, mask=s_ok, other=float("-inf"))
    top = reduce_max(lse, 0)
    weight = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    o = tl.load(part_out_ptr + part[:, None] * BLOCK_D + d[None, :], mask=s_ok[:, None], other=0.0)
    total = reduce_sum(weight, 0)
    acc = reduce_sum(weight[:, None] * o, 0) / tl.where(total > 0.0, total, 1.0)
    out = out_ptr + seq * stride_o_seq + head * stride_o_head + d
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=d < head_dim)


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor | None = None, num_splits: int | None = None,
) -> torch.Tensor:
    """out[b, h] = softmax(q[b, h]·K_b[h // G]ᵀ·scale)·V_b[h // G], K_b/V_b: sequence b's context_lens[b] keys.

    q: [B, H, D], one new token per sequence (meta.decode_only), rows of stride 1; k_cache, v_cache:
    [num_blocks, block_size, H_kv, D] contiguous, q's dtype, G = H / H_kv; meta.block_tables: [B, max_blocks]
    int32; meta.context_lens: [B] int32 (0: padding row, gets zeros). out: [B, H, D] to write into (default: a
    new contiguous tensor); num_splits: context splits (default: from shapes alone). Returns out."""
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert meta.decode_only and num_seqs == meta.num_seqs, f"q {tuple(q.shape)} is not one token per sequence"
    assert k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim and num_heads % num_kv_heads == 0
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1, "caches and q rows contiguous"
    assert q.dtype == k_cache.dtype == v_cache.dtype, f"q is {q.dtype}, caches are {k_cache.dtype}"
    assert meta.block_tables.dtype == meta.context_lens.dtype == torch.int32 and meta.block_tables.shape[0] == num_seqs
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = _num_splits(num_seqs * num_kv_heads, meta.block_tables.shape[1] * block_size, q.device)
    block_d = triton.next_power_of_2(head_dim)
    part_out = part_lse = out  # placeholders, never touched with one split
    if num_splits > 1:
        part_out = torch.empty(num_seqs, num_heads, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_attention_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, meta.block_tables, meta.context_lens, out, part_out, part_lse,
        scale * LOG2E, head_dim, block_size, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        meta.block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=_block_n(q.dtype), BLOCK_D=block_d,
        SPLIT=num_splits > 1, UPCAST=dot_upcast(q.dtype), PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            part_out, part_lse, out, head_dim, num_splits, out.stride(0), out.stride(1),
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d,
        )
    return out


def _num_splits(programs_per_split: int, max_context: int, device: torch.device) -> int:
    """Enough splits to fill the device a few times over, none shorter than MIN_SPLIT_TOKENS of the longest
    possible context (the block table width): shapes only, so the grid is fixed for a captured graph."""
    by_length = triton.cdiv(max_context, MIN_SPLIT_TOKENS)
    by_occupancy = triton.cdiv(_target_programs(device), programs_per_split)
    return max(1, min(by_length, by_occupancy, MAX_SPLITS))


@functools.cache
def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 64
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _block_n(dtype: torch.dtype) -> int:
    """Keys per step, gathered token by token through the block table, so any block_size works. With 4 warps,
    the sizes that compile for sm_90 at D=128 without register spills under Triton 3.6: exact float32 dots run
    on CUDA cores and need the smaller tile."""
    return 16 if dtype == torch.float32 else 32
