"""Merging is exact and reversible: the base weights come back bit-identical after any number of switches,
and the merged adapter keeps its device slot for as long as it is merged."""
import random

import pytest
import torch

from fair_lora import AdapterInUseError, FairLoRAError, HotSwitchError
from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix


def base_weights(engine) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in engine.model.named_parameters()}


def test_thousand_switches_leave_base_weights_bit_identical(demo):
    engine = make_engine(demo)
    before = base_weights(engine)
    names = [*demo.adapters, None]
    rng = random.Random(0)
    for _ in range(1000):  # every call a real switch: a different adapter (or the base) each time
        engine.set_hot_adapter(rng.choice([n for n in names if n != engine.hot_adapter]))
    assert len(engine.switches) == 1000
    engine.set_hot_adapter(None)
    after = base_weights(engine)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_merged_weights_equal_base_plus_scaled_delta(demo):
    engine = make_engine(demo)
    adapter = engine.pool.get("adapter-2")
    path, (a, b) = next(iter(adapter.weights.items()))
    w0 = engine.model.get_submodule(path).weight.detach().clone()
    engine.set_hot_adapter("adapter-2")
    merged = engine.model.get_submodule(path).weight
    torch.testing.assert_close(merged, w0 + adapter.scaling * b @ a, rtol=1e-6, atol=1e-6)


def test_merged_adapter_is_pinned_and_cannot_be_unloaded_or_evicted(demo, oracle):
    engine = make_engine(demo, max_adapter_slots=2)
    engine.set_hot_adapter("adapter-0")
    with pytest.raises(AdapterInUseError, match="merged"):
        engine.unload_adapter("adapter-0")
    # Five other adapters through one free slot: every one is loaded and evicted in turn, never the hot one.
    outputs = engine.generate(*zip(*request_mix(demo)), greedy(6))
    assert engine.pool.slot_of.get("adapter-0") is not None and engine.hot_adapter == "adapter-0"
    assert_matches_oracle(engine, oracle, outputs, 6)


def test_switch_in_slora_mode_is_refused(demo):
    engine = make_engine(demo, mode="slora")
    with pytest.raises(FairLoRAError, match="never merges"):
        engine.set_hot_adapter("adapter-0")


@pytest.mark.parametrize("previous", [None, "adapter-1"], ids=["from-base", "from-another-adapter"])
def test_a_merge_that_fails_part_way_restores_the_base_and_keeps_serving(demo, oracle, monkeypatch, previous):
    engine = make_engine(demo)
    before = base_weights(engine)
    if previous:
        engine.set_hot_adapter(previous)
    import fair_lora.lora.hot_merge as hot_merge

    merged = []

    def failing_merge(weight, pristine, b_t, a, scaling):
        if len(merged) == 5:  # five projections written, then the device runs out of memory
            raise torch.OutOfMemoryError("injected")
        merged.append(weight)
        return hot_merge.lora_merge_ref(weight, pristine, b_t, a, scaling)

    monkeypatch.setattr(hot_merge, "lora_merge_ref", failing_merge)
    with pytest.raises(HotSwitchError, match="base weights are restored"):
        engine.set_hot_adapter("adapter-3")
    monkeypatch.undo()
    assert engine.hot_adapter is None and not engine.pool.pins, "a failed merge left a slot pinned"
    after = base_weights(engine)
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed merge left weights half-merged"
    outputs = engine.generate(*zip(*request_mix(demo)), greedy(6))
    assert_matches_oracle(engine, oracle, outputs, 6)
    engine.set_hot_adapter("adapter-3")  # and the next switch works
    assert engine.hot_adapter == "adapter-3"


def test_a_judged_merge_that_fails_between_steps_leaves_the_step_unmerged_and_is_not_retried(demo, monkeypatch):
    """An assigned (or auto_hot) merge runs inside step(): its failure must not fail the step, and a merge that
    fails is not attempted again every step, only when the choice changes."""
    engine = make_engine(demo)
    import fair_lora.lora.hot_merge as hot_merge

    attempts = []

    def failing_merge(weight, pristine, b_t, a, scaling):
        attempts.append(1)
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(hot_merge, "lora_merge_ref", failing_merge)
    engine.hot_switch.assignment, engine.hot_switch.assigned = True, "adapter-3"  # as assign() leaves it
    outputs = engine.generate(*zip(*request_mix(demo)), greedy(3))
    assert all(o.finished and o.token_ids for o in outputs) and engine.hot_adapter is None
    assert len(attempts) == 1, "the failed merge was retried on later steps"
    monkeypatch.undo()
    engine.assign_hot_adapter("adapter-1")  # a new choice is merged
    assert engine.hot_adapter == "adapter-1"
