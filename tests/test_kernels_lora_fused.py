"""The fused decode correction (shrink and expand in one launch) against the float32 torch references, and the
correction op's choice of it. Cases and helpers are the shrink/expand tests' (tests/test_kernels_lora.py).

Without CUDA the kernel runs in Triton's CPU interpreter; TRITON_INTERPRET is set before the kernel's import.
"""
import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fair_lora.kernels.lora import correction as correction_module  # noqa: E402
from fair_lora.kernels.lora import fused as fused_module  # noqa: E402
from fair_lora.kernels.lora import shrink as shrink_module  # noqa: E402
from fair_lora.kernels.lora.batch import build_lora_batch  # noqa: E402
from fair_lora.kernels.lora.correction import lora_correction  # noqa: E402
from fair_lora.kernels.lora.fused import column_items, lora_fused  # noqa: E402
from fair_lora.kernels.lora.fused_ref import lora_fused_ref  # noqa: E402
from tests.test_kernels_lora import (  # noqa: E402
    DEVICE, DTYPE_SHAPES, GROUPS, PATTERNS, assert_close, group_case, make_case, make_group, reference,
)

REAL_SHRINK, REAL_FUSED = shrink_module.lora_shrink, lora_fused


@pytest.fixture
def small_grid(monkeypatch):
    """Fewer programs than work items, so every program walks several items (on a GPU the grid is ~2 per SM)."""
    monkeypatch.setattr(fused_module, "GRID", 3)


@pytest.mark.parametrize("dtype,h_in,h_out", DTYPE_SHAPES, ids=str)
@pytest.mark.parametrize("num_tokens", [1, 7, 40])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_fused_matches_reference_and_leaves_hot_rows_untouched(pattern, num_tokens, dtype, h_in, h_out, small_grid):
    token_slots, hot, batch, slots, x, y = make_case(pattern, num_tokens, h_in, h_out, dtype)
    ref = reference(y, x, slots, batch)
    untouched = ((token_slots == hot) if hot is not None else (token_slots < 0)).to(DEVICE)
    y0 = y.clone()
    lora_fused(y, x, slots, batch)
    assert_close(y, ref, dtype)
    assert torch.equal(y[untouched], y0[untouched])


def test_reference_is_the_shrink_then_the_expand():
    _, _, batch, slots, x, y = make_case("base-mixed", 7, 40, 56, torch.float32, device="cpu")
    out = y.clone()
    lora_fused_ref(out, x, slots, batch)
    assert torch.equal(out, reference(y, x, slots, batch))


@pytest.mark.parametrize("sizes", GROUPS, ids=str)
@pytest.mark.parametrize("pattern,num_tokens", [("base-mixed", 7), ("zipf:1.5", 40), ("no-hot", 3), ("distinct", 1)])
def test_fused_group_equals_each_projection_corrected_alone(sizes, pattern, num_tokens, small_grid):
    """Over a group (q/k/v with narrow k/v, gate/up; the middle sub-projection untargeted by some adapters) each
    item reads its own sub-projection's A rows, ranks and Bᵀ columns."""
    group, batch, x, y, expected = group_case(sizes, pattern, num_tokens, f"fused {sizes} {pattern} {num_tokens}")
    lora_fused(y, x, group, batch)
    assert_close(y, expected, torch.float32)


@pytest.mark.parametrize("chains", [1, 2, 4])
def test_wide_inputs_and_many_column_blocks(chains, small_grid, monkeypatch):
    """H_in over several K blocks (5: not a multiple of the accumulator chains, the last one partial) and an output
    over several items of several blocks (a partial last block)."""
    monkeypatch.setattr(fused_module, "CHAINS", chains)
    h_in = 5 * fused_module.BLOCK_K - 20
    h_out = 2 * fused_module.BLOCKS_PER_ITEM * fused_module.BLOCK_N + 24
    _, _, batch, slots, x, y = make_case("zipf:1.5", 7, h_in, h_out, torch.float32)
    ref = reference(y, x, slots, batch)
    lora_fused(y, x, slots, batch)
    assert_close(y, ref, torch.float32)


def test_column_items_cover_each_sub_projection_once():
    items = column_items((300, 40, 40), 64, 2, "cpu").tolist()
    assert items == [[0, 0, 128], [0, 128, 256], [0, 256, 300], [1, 300, 340], [2, 340, 380]]


def test_tiles_past_the_real_count_are_never_read(small_grid):
    """A CUDA graph's tables are longer than a step's tiles, with stale tiles of earlier steps after the real ones;
    the items come from `tile_counts`, so the stale ones are never expanded (read, they would add twice)."""
    _, _, batch, slots, x, y = make_case("zipf:1.5", 7, 40, 56, torch.float32)
    ref = reference(y, x, slots, batch)
    stale = torch.cat([batch.expand_tiles, batch.expand_tiles.repeat(3, 1)])
    lora_fused(y, x, slots, dataclasses.replace(batch, expand_tiles=stale))
    assert_close(y, ref, torch.float32)


# 7 tokens: a few entries; 40: more entries than FUSED_MAX_ENTRIES; 600 tokens take prefill-sized tiles
@pytest.mark.parametrize("num_tokens,used", [(7, True), (40, False), (600, False)])
def test_correction_op_takes_the_fused_kernel_for_few_entries_when_on(num_tokens, used, monkeypatch):
    _, _, batch, slots, x, y = make_case("base-mixed", num_tokens, 40, 56, torch.float32)
    monkeypatch.setattr(correction_module, "FUSED_MAX_ENTRIES", 16)
    ref = reference(y, x, slots, batch)
    fused_calls, shrink_calls = [], []
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    monkeypatch.setattr(correction_module, "FUSED_DECODE", True)
    monkeypatch.setattr(fused_module, "lora_fused", lambda *a: fused_calls.append(1) or REAL_FUSED(*a))
    monkeypatch.setattr(shrink_module, "lora_shrink", lambda *a: shrink_calls.append(1) or REAL_SHRINK(*a))
    lora_correction(y, x, slots, batch)
    assert_close(y, ref, torch.float32)
    assert (fused_calls, shrink_calls) == (([1], []) if used else ([], [1]))


def test_correction_op_keeps_shrink_and_expand_when_off(monkeypatch):
    _, _, batch, slots, x, y = make_case("uniform", 7, 40, 56, torch.float32)
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    monkeypatch.setattr(correction_module, "FUSED_DECODE", False)
    monkeypatch.setattr(fused_module, "lora_fused", lambda *a: pytest.fail("fused kernel used while off"))
    ref = reference(y, x, slots, batch)
    lora_correction(y, x, slots, batch)
    assert_close(y, ref, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens,hot_share", [(256, 0.9), (32, 0.0), (1, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_on_gpu_matches_reference_at_model_size(num_tokens, hot_share, dtype):
    """Llama-7B's q/k/v group (3 x 4096 over H_in 4096) and 100 rank-16 adapters."""
    gen = torch.Generator().manual_seed(1)
    num_slots, h_in, sizes = 100, 4096, (4096, 4096, 4096)
    hot = torch.rand(num_tokens, generator=gen) < hot_share
    token_slots = torch.where(hot, 0, torch.randint(1, num_slots, (num_tokens,), generator=gen))
    batch = build_lora_batch(token_slots, 0.5 + torch.rand(num_slots, generator=gen), 0, DEVICE)
    group, _ = make_group(sizes, num_slots, h_in, dtype, gen)
    x = torch.randn(num_tokens, h_in, generator=gen).to(DEVICE, dtype)
    y = torch.randn(num_tokens, sum(sizes), generator=gen).to(DEVICE, dtype)
    ref = reference(y, x, group, batch)
    lora_fused(y, x, group, batch)
    assert_close(y, ref, dtype)
