"""The correction's batch metadata (kernels/lora/batch.py): which entries each token gets, their segments and
tiles, and the tile bound CUDA graphs size their tables by. Host-side; no kernel runs here."""
import pytest
import torch

from fair_lora.kernels.lora.batch import LoRABatch, build_lora_batch, max_tiles
from tests.test_kernels_lora import PATTERNS, make_tokens, pool_size


def entry_slots(batch: LoRABatch) -> list[int]:
    """Each entry's pool slot, as the kernels see it: that of its segment."""
    starts = batch.seg_start_host
    return [s for g, s in enumerate(batch.seg_slot_host) for _ in range(starts[g + 1] - starts[g])]


def entries(batch: LoRABatch) -> list[tuple[int, int, float]]:
    return list(zip(batch.token_idx.tolist(), entry_slots(batch), batch.scale.tolist()))


def test_batch_gives_cold_tokens_own_plus_hot_subtraction_and_hot_tokens_nothing():
    scales = torch.tensor([2.0, 0.5, 0.25, 4.0])
    batch = build_lora_batch(torch.tensor([1, 0, 2, -1, 0, 1]), scales, 0, "cpu")
    assert sorted(entries(batch)) == sorted([
        (0, 1, 0.5), (0, 0, -2.0), (2, 2, 0.25), (2, 0, -2.0), (3, 0, -2.0), (5, 1, 0.5), (5, 0, -2.0),
    ])
    assert not {1, 4} & set(batch.token_idx.tolist())


def test_batch_without_hot_adapter_gives_one_entry_per_adapter_token_and_none_to_base_tokens():
    batch = build_lora_batch(torch.tensor([1, -1, 2, 1]), torch.tensor([2.0, 0.5, 0.25]), None, "cpu")
    assert sorted(entries(batch)) == [(0, 1, 0.5), (2, 2, 0.25), (3, 1, 0.5)]
    assert batch.hot_entry_of.tolist() == [-1, -1, -1]


def pattern_batch(pattern: str, num_tokens: int) -> tuple[LoRABatch, int | None]:
    token_slots, hot = make_tokens(pattern, num_tokens, torch.Generator().manual_seed(num_tokens))
    return build_lora_batch(token_slots, torch.ones(pool_size(num_tokens)), hot, "cpu"), hot


@pytest.mark.parametrize("num_tokens", [1, 7, 133, 600])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_batch_entries_sorted_by_slot_in_bounded_segments(pattern, num_tokens):
    batch, hot = pattern_batch(pattern, num_tokens)
    slot = entry_slots(batch)
    assert slot == sorted(slot)
    starts = batch.seg_start_host
    assert starts[0] == 0 and starts[-1] == batch.num_entries and len(starts) == len(batch.seg_slot_host) + 1
    for g, s in enumerate(batch.seg_slot_host):
        assert starts[g] < starts[g + 1] and set(slot[starts[g]:starts[g + 1]]) == {s}


@pytest.mark.parametrize("num_tokens", [1, 7, 133, 600])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_batch_tiles_cover_entries_once_and_expand_owns_each_row_once(pattern, num_tokens):
    batch, hot = pattern_batch(pattern, num_tokens)
    slot, tok, pair = entry_slots(batch), batch.token_idx.tolist(), batch.hot_entry_of.tolist()

    def covered(tiles: torch.Tensor) -> list[int]:
        out = []
        for first, end, s in tiles.tolist():
            assert 0 < end - first <= batch.tile_entries and set(slot[first:end]) == {s}
            out += range(first, end)
        return out

    assert sorted(covered(batch.shrink_tiles)) == list(range(batch.num_entries))
    owned = covered(batch.expand_tiles)
    partners = [pair[e] for e in owned if pair[e] >= 0]
    assert sorted(owned + partners) == list(range(batch.num_entries))
    assert len({tok[e] for e in owned}) == len(owned)
    assert all(tok[pair[e]] == tok[e] and slot[pair[e]] == hot for e in owned if pair[e] >= 0)
    # A CUDA graph sizes its tile tables for 2 entries per token over the pool's slots: never exceeded.
    bound = max_tiles(2 * num_tokens, pool_size(num_tokens), batch.tile_entries)
    assert len(batch.shrink_tiles) <= max_tiles(batch.num_entries, len(batch.seg_slot_host), batch.tile_entries) <= bound
    assert len(batch.expand_tiles) <= bound
