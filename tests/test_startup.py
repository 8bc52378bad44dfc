"""Start-up: the KV cache plan (sizes, refusals with the knob to turn), the memory profile's forward, the
warm-up's steps (which leave the engine as they found it), and shapes the CUDA kernels cannot take."""
import dataclasses

import pytest
import torch

from fair_lora import EngineConfig, ModelFormatError
from fair_lora.engine.memory_plan import MemoryPlanError, kv_block_bytes, plan_memory
from fair_lora.engine.warmup import profile_forward, run_warm_up
from fair_lora.models.loader import check_kernel_shapes
from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix


def _never():
    raise AssertionError("the CPU plan must not profile")


def test_kv_cache_follows_the_settings_on_the_cpu(demo):
    engine = make_engine(demo, num_kv_tokens=1000, max_model_len=128)
    assert engine.blocks.num_blocks == 63 and engine.memory_plan.kv_tokens == 1008
    args = engine.model.args
    default = plan_memory(EngineConfig(max_num_seqs=3), args, 100, _never)
    assert default.num_blocks == 3 * 7  # max_num_seqs sequences of max_model_len, 16-token blocks
    assert default.block_bytes == kv_block_bytes(args, 16, torch.float32) == 2 * args.num_layers * 16 * args.num_kv_heads * args.head_dim * 4
    assert "3 sequences of max_model_len 100" in default.describe()


def test_a_cache_too_small_for_one_sequence_is_refused_naming_the_knob(demo):
    with pytest.raises(MemoryPlanError, match="num_kv_tokens or lower max_model_len"):
        make_engine(demo, num_kv_tokens=64, max_model_len=128)
    with pytest.raises(ValueError, match="not both"):
        EngineConfig(num_kv_blocks=4, num_kv_tokens=64)


def test_the_profile_forward_runs_the_largest_step_and_frees_its_cache(demo):
    engine = make_engine(demo)
    profile_forward(engine.model, 300, 16, torch.float32, "cpu", engine.config.max_adapter_slots)
    assert all(layer.self_attn.k_cache is None for layer in engine.model.model.layers)


@pytest.mark.parametrize("mode", ["fair", "slora"])
def test_warm_up_leaves_the_engine_as_it_found_it(demo, oracle, mode):
    engine = make_engine(demo, max_num_seqs=8, mode=mode)
    engine.add_request("counted", "adapter-2", greedy(2))
    while engine.has_unfinished():
        engine.step()
    window = engine.window.snapshot()
    run_warm_up(engine)
    assert engine.window.snapshot() == window and engine.switches == [] and engine.hot_adapter is None
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == 0 and stats["free_blocks"] == stats["num_blocks"]
    assert not engine.pool.pins and set(engine.pool.slot_of) == set(engine.adapters()[: engine.pool.num_slots])
    outputs = engine.generate(*zip(*request_mix(demo)), greedy(4))  # and it serves exactly as before
    assert_matches_oracle(engine, oracle, outputs, 4)


def test_heads_narrower_than_16_are_refused_on_cuda_only(demo):
    args = make_engine(demo).model.args
    narrow = dataclasses.replace(args, head_dim=8)
    with pytest.raises(ModelFormatError, match="head_dim 8 < 16"):
        check_kernel_shapes(narrow, "cuda")
    check_kernel_shapes(narrow, "cpu")  # the torch reference ops take any shape
