"""Triton paged attention (decode, prefill/mixed) and the KV cache write against the float32 torch reference.

Without CUDA the kernels run in Triton's CPU interpreter; triton.jit reads TRITON_INTERPRET when a kernel
module is imported, so it is set here, before those imports. Caches are poisoned with NaN everywhere except
the sequences' context, and outputs before the kernels run, so a stray read or an unwritten row shows.
"""
import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fair_lora.kernels.attention import kv_cache_write as kv_cache_write_module  # noqa: E402
from fair_lora.kernels.attention import decode as decode_module  # noqa: E402
from fair_lora.kernels.attention import prefill as prefill_module  # noqa: E402
from fair_lora.kernels.attention.metadata import AttentionMetadata  # noqa: E402
from fair_lora.kernels.attention.kv_cache_write import kv_cache_write  # noqa: E402
from fair_lora.kernels.attention.paged_attention import paged_attention, write_kv_cache  # noqa: E402
from fair_lora.kernels.attention.paged_attention_ref import paged_attention_ref, write_kv_cache_ref  # noqa: E402
from fair_lora.kernels.attention.decode import paged_decode_attention  # noqa: E402
from fair_lora.kernels.attention.prefill import prefill_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
GROUPS = [1, 2, 4]
BLOCK_SIZE = 16
# Each batch is a list of (context length, new tokens): the new tokens are the last ones of the context.
CONTEXTS = [1, 3, 7, BLOCK_SIZE, BLOCK_SIZE + 1, 133]
BATCHES = {
    "decode": [(c, 1) for c in CONTEXTS],
    "prefill": [(c, c) for c in CONTEXTS],
    "mixed": [(133, 40), (17, 1), (1, 1), (16, 16), (33, 17), (7, 3), (64, 1), (18, 2)],
    "one-decode": [(17, 1)],
    "one-prefill": [(133, 133)],
    "one-chunk": [(133, 5)],
}


def make_case(batch: list[tuple[int, int]], num_kv_heads: int, group: int, head_dim: int, dtype: torch.dtype,
              seed: int = 0, device: str = DEVICE, block_size: int = BLOCK_SIZE):
    """q, caches and metadata for `batch`; each sequence's blocks are a random, non-contiguous set of the
    physical blocks, spare blocks and slots past a context are NaN."""
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-ctx // block_size) for ctx, _ in batch]
    num_blocks = sum(needed) + 5
    physical = torch.randperm(num_blocks, generator=gen).tolist()
    tables, slots, query_start = [], [], [0]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.full(shape, float("nan"), dtype=dtype), torch.full(shape, float("nan"), dtype=dtype)
    for (ctx, num_new), count in zip(batch, needed):
        table, physical = physical[:count], physical[count:]
        tables.append(table + [-1] * (max(needed) - count))
        context_slots = [table[p // block_size] * block_size + p % block_size for p in range(ctx)]
        slots += context_slots[ctx - num_new:]
        query_start.append(query_start[-1] + num_new)
        for cache in (k_cache, v_cache):
            values = torch.randn(ctx, num_kv_heads, head_dim, generator=gen).to(dtype)
            cache.view(-1, num_kv_heads, head_dim)[context_slots] = values
    q = torch.randn(query_start[-1], num_kv_heads * group, head_dim, generator=gen).to(dtype)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start=torch.tensor(query_start, dtype=torch.int32, device=device),
        context_lens=torch.tensor([ctx for ctx, _ in batch], dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        query_start_host=tuple(query_start),
        context_lens_host=tuple(ctx for ctx, _ in batch),
        max_query_len=max(num_new for _, num_new in batch),
    )
    return q.to(device), k_cache.to(device), v_cache.to(device), meta


def reference(q, k_cache, v_cache, meta) -> torch.Tensor:
    return paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), meta, q.shape[-1] ** -0.5)


def poisoned(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, float("nan"))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert not out.isnan().any(), "rows left unwritten or NaN read from the cache"
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("batch", list(BATCHES))
def test_prefill_kernel_matches_reference(batch, group, dtype):
    q, k_cache, v_cache, meta = make_case(BATCHES[batch], 2, group, 64, dtype)
    out = prefill_attention(q, k_cache, v_cache, meta, 64**-0.5, out=poisoned(q))
    assert_close(out, reference(q, k_cache, v_cache, meta), dtype)


@pytest.mark.parametrize("num_splits", [1, 3, None], ids=["one-split", "three-splits", "auto-splits"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", GROUPS)
def test_decode_kernel_matches_reference(group, dtype, num_splits):
    q, k_cache, v_cache, meta = make_case(BATCHES["decode"], 2, group, 64, dtype)
    out = paged_decode_attention(q, k_cache, v_cache, meta, 64**-0.5, out=poisoned(q), num_splits=num_splits)
    assert_close(out, reference(q, k_cache, v_cache, meta), dtype)


@pytest.mark.parametrize("group", [1, 4])
def test_fp16_kernels_match_reference(group):
    """fp16 operands reach tl.dot as they are, as 16-bit ones do on the GPU (the interpreter upcasts bf16)."""
    for batch, kernel in (("decode", paged_decode_attention), ("mixed", prefill_attention)):
        q, k_cache, v_cache, meta = make_case(BATCHES[batch], 2, group, 64, torch.float16)
        out = kernel(q, k_cache, v_cache, meta, 64**-0.5, out=poisoned(q))
        assert_close(out, reference(q, k_cache, v_cache, meta), torch.float16)


@pytest.mark.parametrize("head_dim,block_size", [(128, 16), (80, 16), (64, 8), (64, 32)])
def test_kernels_handle_other_head_dims_and_block_sizes(head_dim, block_size):
    for batch, kernel in (("decode", paged_decode_attention), ("mixed", prefill_attention)):
        q, k_cache, v_cache, meta = make_case(BATCHES[batch], 1, 2, head_dim, torch.float32, block_size=block_size)
        out = kernel(q, k_cache, v_cache, meta, head_dim**-0.5, out=poisoned(q))
        assert_close(out, reference(q, k_cache, v_cache, meta), torch.float32)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_decode_padding_rows_of_context_zero_get_zeros(num_splits):
    q, k_cache, v_cache, meta = make_case([(17, 1), (5, 1), (40, 1)], 2, 2, 64, torch.float32)
    padded = AttentionMetadata(
        slot_mapping=meta.slot_mapping, query_start=meta.query_start,
        context_lens=torch.tensor([17, 0, 40], dtype=torch.int32, device=DEVICE), block_tables=meta.block_tables,
        query_start_host=meta.query_start_host, context_lens_host=(17, 0, 40), max_query_len=1,
    )
    out = paged_decode_attention(q, k_cache, v_cache, padded, 64**-0.5, out=poisoned(q), num_splits=num_splits)
    ref = reference(q, k_cache, v_cache, meta)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_close(out[[0, 2]], ref[[0, 2]], torch.float32)


@pytest.mark.parametrize("batch", ["decode", "mixed"])
def test_public_op_dispatches_to_the_kernel_for_its_batch(batch, monkeypatch):
    q, k_cache, v_cache, meta = make_case(BATCHES[batch], 2, 2, 64, torch.float32)
    calls = []
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    monkeypatch.setattr(decode_module, "paged_decode_attention",
                        lambda *a: calls.append("decode") or paged_decode_attention(*a))
    monkeypatch.setattr(prefill_module, "prefill_attention",
                        lambda *a: calls.append("prefill") or prefill_attention(*a))
    out = paged_attention(q, k_cache, v_cache, meta, 64**-0.5)
    assert_close(out, reference(q, k_cache, v_cache, meta), torch.float32)
    assert calls == (["decode"] if batch == "decode" else ["prefill"])


def test_public_ops_use_the_reference_for_cpu_tensors_by_default(monkeypatch):
    q, k_cache, v_cache, meta = make_case(BATCHES["mixed"], 2, 2, 64, torch.float32, device="cpu")
    monkeypatch.delenv("FAIR_LORA_TRITON", raising=False)
    for module, name in ((prefill_module, "prefill_attention"), (decode_module, "paged_decode_attention"),
                         (kv_cache_write_module, "kv_cache_write")):
        monkeypatch.setattr(module, name, lambda *a: pytest.fail("Triton used for CPU tensors"))
    k = torch.randn(q.shape[0], 2, 64)
    write_kv_cache(k, k, k_cache, v_cache, meta.slot_mapping)
    assert torch.equal(paged_attention(q, k_cache, v_cache, meta, 0.125), reference(q, k_cache, v_cache, meta))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens", [1, 7, 133])
def test_kv_cache_write_matches_reference_and_skips_negative_slots(num_tokens, dtype):
    gen = torch.Generator().manual_seed(num_tokens)
    shape = (20, BLOCK_SIZE, 2, 64)
    slots = torch.randperm(shape[0] * BLOCK_SIZE, generator=gen)[:num_tokens]
    skipped = torch.rand(num_tokens, generator=gen) < 0.2
    k, v = (torch.randn(num_tokens, 2, 64, generator=gen).to(dtype).to(DEVICE) for _ in range(2))
    k_cache, v_cache, k_ref, v_ref = (torch.full(shape, float("nan"), dtype=dtype, device=DEVICE) for _ in range(4))
    kv_cache_write(k, v, k_cache, v_cache, torch.where(skipped, -1, slots).to(DEVICE))
    kept = (~skipped).to(DEVICE)
    write_kv_cache_ref(k[kept], v[kept], k_ref, v_ref, slots.to(DEVICE)[kept])
    assert torch.equal(k_cache.nan_to_num(7.0), k_ref.nan_to_num(7.0))
    assert torch.equal(v_cache.nan_to_num(7.0), v_ref.nan_to_num(7.0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("num_kv_heads,group", [(32, 1), (8, 4)])
def test_kernels_match_reference_at_model_shapes(num_kv_heads, group, dtype):
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 3000, (48,), generator=gen).tolist()
    decode = [(c, 1) for c in lengths] + [(4096, 1)]
    mixed = [(c, 1) for c in lengths[:40]] + [(2048, 2048), (3000, 512), (700, 77)]
    for batch, kernel in ((decode, paged_decode_attention), (mixed, prefill_attention)):
        q, k_cache, v_cache, meta = make_case(batch, num_kv_heads, group, 128, dtype)
        out = kernel(q, k_cache, v_cache, meta, 128**-0.5, out=poisoned(q))
        assert_close(out, reference(q, k_cache, v_cache, meta), dtype)


@pytest.mark.gpu
def test_decode_captured_in_a_cuda_graph_replays_with_new_context_lengths():
    q, k_cache, v_cache, meta = make_case([(1000, 1)] * 4, 8, 4, 128, torch.bfloat16)
    out = torch.empty_like(q)
    step = lambda: paged_decode_attention(q, k_cache, v_cache, meta, 128**-0.5, out=out)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for lengths in ([1000, 1, 17, 999], [3, 500, 64, 65]):
        meta.context_lens.copy_(torch.tensor(lengths, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        replayed = dataclasses.replace(meta, context_lens_host=tuple(lengths))
        assert_close(out, reference(q, k_cache, v_cache, replayed), torch.bfloat16)
