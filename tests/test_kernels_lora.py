"""The correction op's Triton shrink/expand against the float32 torch references (its batch metadata:
tests/test_lora_batch.py).

Without CUDA the kernels run in Triton's CPU interpreter; triton.jit reads TRITON_INTERPRET when a kernel
module is imported, so it is set here, before those imports.
"""
import dataclasses
import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fair_lora.kernels.lora import expand as lora_expand_module  # noqa: E402
from fair_lora.kernels.lora import shrink as lora_shrink_module  # noqa: E402
from fair_lora.kernels.lora.batch import LoRABatch, build_lora_batch  # noqa: E402
from fair_lora.kernels.lora.correction import lora_correction  # noqa: E402
from fair_lora.kernels.lora.expand import lora_expand  # noqa: E402
from fair_lora.kernels.lora.expand_ref import lora_expand_ref  # noqa: E402
from fair_lora.kernels.lora.shrink import lora_shrink  # noqa: E402
from fair_lora.kernels.lora.shrink_ref import lora_shrink_ref  # noqa: E402
from fair_lora.kernels.lora.slots import LoRASlots  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RANK_CYCLE = (16, 4, 8, 64, 0)  # slot s has rank RANK_CYCLE[s % 5]: mixed ranks and an untargeted slot
MAX_RANK = 64
HOT = 0
PATTERNS = ["identical", "distinct", "uniform", "zipf:1.5", "all-hot", "no-hot", "base-mixed", "hot-untargeted"]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
DRAWN_SLOTS = 12  # random patterns draw from this many slots: all ranks, and few tiles for the interpreter


def pool_size(num_tokens: int) -> int:
    return max(num_tokens + 2, DRAWN_SLOTS)  # "distinct" gives every token its own slot


def make_tokens(pattern: str, num_tokens: int, gen: torch.Generator) -> tuple[torch.Tensor, int | None]:
    """Each token's adapter slot (-1: base model) and the hot slot, for one popularity pattern."""
    uniform = torch.randint(0, DRAWN_SLOTS, (num_tokens,), generator=gen)
    if pattern == "identical":
        return torch.full((num_tokens,), 3), HOT
    if pattern == "distinct":
        return torch.arange(1, num_tokens + 1), HOT
    if pattern == "uniform":
        return uniform, HOT
    if pattern.startswith("zipf:"):
        weights = torch.arange(1, DRAWN_SLOTS + 1, dtype=torch.float64) ** -float(pattern.split(":")[1])
        return torch.multinomial(weights, num_tokens, replacement=True, generator=gen), HOT
    if pattern == "all-hot":
        return torch.full((num_tokens,), HOT), HOT
    if pattern == "no-hot":
        return torch.where(torch.rand(num_tokens, generator=gen) < 0.3, -1, uniform), None
    if pattern == "base-mixed":
        return torch.where(torch.rand(num_tokens, generator=gen) < 0.3, -1, uniform), HOT
    if pattern == "hot-untargeted":
        return torch.where(torch.rand(num_tokens, generator=gen) < 0.3, -1, uniform), 4
    raise ValueError(pattern)


def make_slots(
    num_slots: int, h_in: int, h_out: int, dtype: torch.dtype, gen: torch.Generator, device: str
) -> LoRASlots:
    slots = LoRASlots.empty(num_slots, MAX_RANK, h_in, h_out, dtype, device)
    for s in range(num_slots):
        r = RANK_CYCLE[s % len(RANK_CYCLE)]
        a = torch.randn(r, h_in, generator=gen) / h_in**0.5
        b = torch.randn(h_out, r, generator=gen) / r**0.5 if r else None
        slots.write(s, a if r else None, b)
    return slots


def make_case(pattern: str, num_tokens: int, h_in: int, h_out: int, dtype: torch.dtype, device: str = DEVICE):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{pattern} {num_tokens} {h_in} {h_out}".encode()))
    num_slots = pool_size(num_tokens)
    token_slots, hot = make_tokens(pattern, num_tokens, gen)
    scales = 0.5 + torch.rand(num_slots, generator=gen)
    batch = build_lora_batch(token_slots, scales, hot, device)
    slots = make_slots(num_slots, h_in, h_out, dtype, gen, device)
    x = torch.randn(num_tokens, h_in, generator=gen).to(device, dtype)
    y = torch.randn(num_tokens, h_out, generator=gen).to(device, dtype)
    return token_slots, hot, batch, slots, x, y


def float32(slots: LoRASlots) -> LoRASlots:
    return LoRASlots(slots.a.float(), slots.b_t.float(), slots.ranks, list(slots.ranks_host), slots.out_sizes)


def reference(y: torch.Tensor, x: torch.Tensor, slots: LoRASlots, batch: LoRABatch) -> torch.Tensor:
    """The correction applied to a float32 copy of y by the torch references, on float32 weights."""
    out = y.float().clone()  # .float() of a float32 tensor is the tensor itself
    if not batch.empty:
        lora_expand_ref(out, lora_shrink_ref(x.float(), float32(slots), batch), float32(slots), batch)
    return out


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    largest = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * max(largest, 1.0))


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty hands out NaN-filled float tensors, so an element a kernel forgets to write shows."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


SIZES = [1, 3, 7, 133]
DTYPES = [torch.float32, torch.bfloat16]
DTYPE_SHAPES = [(torch.float32, 40, 56), (torch.bfloat16, 72, 56)]  # odd widths: every mask; crossed costs 2x time


@pytest.mark.parametrize("dtype,h_in,h_out", DTYPE_SHAPES, ids=str)
@pytest.mark.parametrize("num_tokens", SIZES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_shrink_writes_every_element_and_matches_reference(
    pattern, num_tokens, dtype, h_in, h_out, nan_empty, small_grids
):
    _, _, batch, slots, x, _ = make_case(pattern, num_tokens, h_in, h_out, dtype)
    v = lora_shrink(x, slots, batch)
    ref = lora_shrink_ref(x.float(), float32(slots), batch)
    assert not v.isnan().any()
    assert_close(v, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern,num_tokens", [("uniform", 7), ("base-mixed", 133)])
@pytest.mark.parametrize("k_blocks", [3, 2 * lora_shrink_module.MAX_K_BLOCKS + 1])  # small grid; long H_in
def test_shrink_splits_wide_inputs_over_programs_and_sums_them(pattern, num_tokens, dtype, k_blocks):
    h_in = k_blocks * lora_shrink_module.BLOCK_K - 20
    _, _, batch, slots, x, _ = make_case(pattern, num_tokens, h_in, 24, dtype)
    v = lora_shrink(x, slots, batch)
    assert_close(v, lora_shrink_ref(x.float(), float32(slots), batch), dtype)


@pytest.mark.parametrize("dtype,h_in,h_out", DTYPE_SHAPES, ids=str)
@pytest.mark.parametrize("num_tokens", SIZES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_expand_adds_both_entries_of_a_token_once(pattern, num_tokens, dtype, h_in, h_out):
    token_slots, hot, batch, slots, x, y = make_case(pattern, num_tokens, h_in, h_out, dtype)
    v = lora_shrink_ref(x.float(), float32(slots), batch)
    ref = reference(y, x, slots, batch)
    untouched = (token_slots == hot) if hot is not None else (token_slots < 0)
    y0 = y.clone()
    lora_expand(y, v, slots, batch)
    assert_close(y, ref, dtype)
    assert torch.equal(y[untouched.to(DEVICE)], y0[untouched.to(DEVICE)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "pattern,num_tokens",  # the kernels' own tests cover every size; 600 tokens take prefill-sized tiles
    [(p, n) for p in PATTERNS for n in (7, 133)] + [(p, 600) for p in ("identical", "zipf:1.5", "base-mixed")],
)
def test_correction_op_dispatches_to_triton_and_matches_reference(pattern, num_tokens, dtype, monkeypatch, small_grids):
    _, _, batch, slots, x, y = make_case(pattern, num_tokens, 40, 56, dtype)
    ref = reference(y, x, slots, batch)
    calls = []
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    monkeypatch.setattr(lora_shrink_module, "lora_shrink", lambda *a: calls.append(1) or lora_shrink(*a))
    lora_correction(y, x, slots, batch)
    assert_close(y, ref, dtype)
    assert calls == ([] if batch.empty else [1])


@pytest.mark.parametrize("pattern", ["zipf:1.5", "base-mixed", "no-hot"])
def test_tiles_past_the_real_count_are_never_read(pattern, monkeypatch):
    """CUDA-graph buckets make the tile tables longer than a step's tiles and leave stale tiles of earlier steps
    after the real ones (and entries past the real ones); the kernels read `tile_counts`, so the rest is inert
    even when it points at real entries (read, it would add their correction twice)."""
    _, _, batch, slots, x, y = make_case(pattern, 7, 40, 56, torch.float32)
    ref = reference(y, x, slots, batch)
    extra = 2 * batch.num_tokens - batch.num_entries

    def stale(tiles: torch.Tensor) -> torch.Tensor:
        return torch.cat([tiles, tiles.repeat(3, 1), torch.zeros(5, 3, dtype=tiles.dtype, device=DEVICE)])

    padded = dataclasses.replace(
        batch,
        token_idx=torch.cat([batch.token_idx, torch.zeros(extra, dtype=batch.token_idx.dtype, device=DEVICE)]),
        scale=torch.cat([batch.scale, torch.zeros(extra, device=DEVICE)]),
        hot_entry_of=torch.cat(
            [batch.hot_entry_of, torch.full((extra,), -1, dtype=batch.hot_entry_of.dtype, device=DEVICE)]
        ),
        shrink_tiles=stale(batch.shrink_tiles),
        expand_tiles=stale(batch.expand_tiles),
    )
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    lora_correction(y, x, slots, padded)
    assert_close(y, ref, torch.float32)


def test_correction_op_uses_the_reference_for_cpu_tensors_by_default(monkeypatch):
    _, _, batch, slots, x, y = make_case("uniform", 7, 40, 56, torch.float32, device="cpu")
    monkeypatch.delenv("FAIR_LORA_TRITON", raising=False)
    monkeypatch.setattr(lora_expand_module, "lora_expand", lambda *a: pytest.fail("Triton used for CPU tensors"))
    ref = reference(y, x, slots, batch)
    lora_correction(y, x, slots, batch)
    assert torch.equal(y, ref)


GROUPS = [(56, 24, 24), (40, 72)]  # q/k/v with grouped-query k/v widths; gate/up


def make_group(sizes: tuple[int, ...], num_slots: int, h_in: int, dtype: torch.dtype, gen: torch.Generator):
    """A group's slots and, for each sub-projection, the same adapters in a standalone single-projection pool.
    Every third slot leaves the middle sub-projection untargeted (PEFT's q/v-only adapters)."""
    group = LoRASlots.empty(num_slots, MAX_RANK, h_in, sizes, dtype, DEVICE)
    alone = [LoRASlots.empty(num_slots, MAX_RANK, h_in, size, dtype, DEVICE) for size in sizes]
    for s in range(num_slots):
        r = RANK_CYCLE[s % len(RANK_CYCLE)]
        for j, size in enumerate(sizes):
            targeted = r and not (s % 3 == 0 and j == 1)
            a = torch.randn(r, h_in, generator=gen) / h_in**0.5 if targeted else None
            b = torch.randn(size, r, generator=gen) / r**0.5 if targeted else None
            group.sub(j).write(s, a, b)
            alone[j].write(s, a, b)
    return group, alone


@pytest.mark.parametrize("sizes", GROUPS, ids=str)
@pytest.mark.parametrize("pattern,num_tokens", [("base-mixed", 7), ("zipf:1.5", 133), ("no-hot", 3), ("distinct", 1)])
def test_group_correction_equals_each_projection_corrected_alone(sizes, pattern, num_tokens, monkeypatch, small_grids):
    """One shrink and one expand over a group (q/k/v, gate/up) write into the fused output exactly what each
    sub-projection's own correction writes into its columns."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{sizes} {pattern} {num_tokens}".encode()))
    token_slots, hot = make_tokens(pattern, num_tokens, gen)
    num_slots = pool_size(num_tokens)
    batch = build_lora_batch(token_slots, 0.5 + torch.rand(num_slots, generator=gen), hot, DEVICE)
    group, alone = make_group(sizes, num_slots, 48, torch.float32, gen)
    x = torch.randn(num_tokens, 48, generator=gen).to(DEVICE)
    y = torch.randn(num_tokens, sum(sizes), generator=gen).to(DEVICE)
    expected = torch.cat([reference(part, x, slots, batch) for part, slots in zip(y.split(sizes, 1), alone)], 1)
    assert_close(reference(y, x, group, batch), expected, torch.float32)  # the group reference
    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    lora_correction(y, x, group, batch)
    assert_close(y, expected, torch.float32)


def test_group_slots_are_views_sub_projections_write_through():
    group = LoRASlots.empty(3, 8, 32, (16, 8, 8), torch.float32, "cpu")
    assert group.rank_width == 16 and group.a.shape == (3, 48, 32) and group.b_t.shape == (3, 16, 32)
    group.sub(2).write(1, torch.ones(8, 32), torch.full((8, 8), 2.0))
    assert group.ranks.tolist() == [[0, 0, 0], [0, 0, 0], [0, 8, 0]] and group.ranks_host[2] == [0, 8, 0]
    assert group.a[1, 32:40].eq(1).all() and group.a[1].count_nonzero() == 8 * 32
    assert group.b_t[1, :8, 24:].eq(2).all() and group.b_t[1].count_nonzero() == 8 * 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_tokens,num_adapters", [(256, 100), (2048, 3)], ids=["decode", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_correction_op_on_gpu_matches_reference_at_model_size(num_tokens, num_adapters, dtype):
    gen = torch.Generator().manual_seed(0)
    h_in, h_out = 4096, 4096 + 8
    weights = torch.arange(1, num_adapters + 1, dtype=torch.float64) ** -1.5
    token_slots = torch.multinomial(weights, num_tokens, replacement=True, generator=gen)
    batch = build_lora_batch(token_slots, 0.5 + torch.rand(num_adapters, generator=gen), HOT, DEVICE)
    slots = make_slots(num_adapters, h_in, h_out, dtype, gen, DEVICE)
    x = torch.randn(num_tokens, h_in, generator=gen).to(DEVICE, dtype)
    y = torch.randn(num_tokens, h_out, generator=gen).to(DEVICE, dtype)
    ref = reference(y, x, slots, batch)
    lora_correction(y, x, slots, batch)
    assert_close(y, ref, dtype)
