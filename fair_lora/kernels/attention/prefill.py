"""Triton causal attention of packed varlen queries over the paged KV cache (prefill, chunked prefill, mixed).

Flash-attention over tiles. Grid (query tile, kv head): a tile is BLOCK_Q = BLOCK_M // G consecutive new
tokens of one sequence, times the G query heads that share a kv head, so the tile's BLOCK_M rows read each
key and value once (GQA) and a decoding sequence's single token still fills G rows. Keys and values are
gathered through the block table, so a chunk attends to the cache written by earlier chunks as well as to
its own keys (written before this op runs). Key tiles wholly below the causal diagonal skip the mask.

Tiles are numbered without host metadata: sequence b's tiles start at query_start[b] // BLOCK_Q + b, so
T // BLOCK_Q + B programs cover every batch, each finds its sequence by binary search over query_start, and
the programs past their sequence's last token return at once.
"""

import torch
import triton
import triton.language as tl

from fair_lora.kernels.attention.common import CAUSAL, LOG2E, NO_MASK, attend
from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.dot_precision import dot_precision, dot_upcast


@triton.jit
def _find_seq(query_start_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """The last sequence b whose first tile, query_start[b] // BLOCK_Q + b, is at or before `tile`."""
    lo: tl.int32 = 0
    hi: tl.int32 = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# The sequence count and the block table's width follow the batch: unspecialised (Triton would compile a
# variant for 1, for multiples of 16 and for the rest), so no batch shape compiles while serving.
@triton.jit(do_not_specialize=["num_seqs", "stride_table"])
def _prefill_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_ptr, context_lens_ptr, block_tables_ptr,
    num_seqs, scale_log2, head_dim, block_size,
    stride_q_tok, stride_q_head, stride_c_block, stride_c_slot, stride_c_head, stride_table, stride_o_tok,
    stride_o_head,
    GROUP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # Causal tiles late in a sequence carry the most work: launch them first, so the short ones fill the tail.
    tile, kv_head = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    seq = _find_seq(query_start_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_ptr + seq)
    num_new = tl.load(query_start_ptr + seq + 1) - q_start
    first = (tile - q_start // BLOCK_Q - seq) * BLOCK_Q
    if first < num_new:
        prefix = tl.load(context_lens_ptr + seq) - num_new
        r = tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        tok = first + r // GROUP
        heads = kv_head * GROUP + r % GROUP
        r_ok = (r < BLOCK_Q * GROUP) & (tok < num_new)
        d_ok = d < head_dim
        pos = prefix + tok
        rows = (q_start + tok).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * stride_q_tok + heads[:, None] * stride_q_head + d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        table = block_tables_ptr + seq.to(tl.int64) * stride_table
        m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l = tl.full((BLOCK_M,), 0.0, tl.float32)
        acc = tl.full((BLOCK_M, BLOCK_D), 0.0, tl.float32)
        # Keys 0..prefix+first are visible to every row of the tile; the rest need the causal mask.
        unmasked = (prefix + first + 1) // BLOCK_N * BLOCK_N
        visible = prefix + tl.minimum(first + BLOCK_Q, num_new)
        m, l, acc = attend(q, m, l, acc, k_cache_ptr, v_cache_ptr, table, kv_head, pos, 0, unmasked, block_size,
                           stride_c_block, stride_c_slot, stride_c_head, scale_log2, d, d_ok,
                           BLOCK_N, NO_MASK, UPCAST, PRECISION)
        m, l, acc = attend(q, m, l, acc, k_cache_ptr, v_cache_ptr, table, kv_head, pos, unmasked, visible,
                           block_size, stride_c_block, stride_c_slot, stride_c_head, scale_log2, d, d_ok,
                           BLOCK_N, CAUSAL, UPCAST, PRECISION)
        acc = acc / l[:, None]
        out = out_ptr + rows[:, None] * stride_o_tok + heads[:, None] * stride_o_head + d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[t, h] = softmax(q[t, h]·K_b[h // G]ᵀ·scale, causal)·V_b[h // G] for token t of sequence b.

    q: [T, H, D], sequence b's n_b new tokens packed at rows query_start[b]:query_start[b+1], rows of stride 1;
    they are the last n_b of its context_lens[b] keys, so row j sees keys 0..context_lens[b] - n_b + j.
    k_cache, v_cache: [num_blocks, block_size, H_kv, D] contiguous, q's dtype, this step's keys already
    written; G = H / H_kv. meta.query_start: [B+1] int32; meta.context_lens: [B] int32;
    meta.block_tables: [B, max_blocks] int32. out: [T, H, D] to write into (default: new). Returns out."""
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = meta.num_seqs
    assert meta.query_start_host[-1] == num_tokens, f"q has {num_tokens} rows, query_start {meta.query_start_host}"
    assert k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim and num_heads % num_kv_heads == 0
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1, "caches and q rows contiguous"
    assert q.dtype == k_cache.dtype == v_cache.dtype, f"q is {q.dtype}, caches are {k_cache.dtype}"
    assert meta.query_start.dtype == meta.context_lens.dtype == meta.block_tables.dtype == torch.int32
    assert meta.query_start.shape == (num_seqs + 1,) and meta.block_tables.shape[0] == num_seqs
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1
    group = num_heads // num_kv_heads
    block_m, block_n, num_warps = _tiles(q.dtype, meta.max_query_len * group)
    block_m = max(block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    _prefill_attention_kernel[(num_tokens // block_q + num_seqs, num_kv_heads)](
        q, k_cache, v_cache, out, meta.query_start, meta.context_lens, meta.block_tables,
        num_seqs, scale * LOG2E, head_dim, block_size,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        meta.block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(head_dim),
        UPCAST=dot_upcast(q.dtype), PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=2,
    )
    return out


def _tiles(dtype: torch.dtype, rows: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) that compile for sm_90 at D=128 with (almost) no register spills under
    Triton 3.6: exact float32 dots run on CUDA cores and need small tiles; 16-bit batches with long queries
    (rows = the longest query's tokens × G) take the large tile, decode-heavy ones one that wastes fewer rows."""
    if dtype == torch.float32:
        return 16, 16, 4
    return (128, 64, 8) if rows >= 128 else (64, 64, 8)
