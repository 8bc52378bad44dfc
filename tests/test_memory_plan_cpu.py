"""On the CPU the KV cache is max_num_seqs sequences of max_model_len, but never more than a share of the host's
available memory: a real model's full context at the default batch would zero-fill more than the machine has."""
from types import SimpleNamespace

import psutil
import pytest

from fair_lora import EngineConfig
from fair_lora.engine.memory_plan import CPU_KV_SHARE, GIB, MemoryPlanError, plan_memory
from fair_lora.models.llama import ModelArgs

# SmolLM2-135M's shapes: 30 layers, 3 KV heads of 64; one token's keys and values take 45 KiB in float32.
SMOLLM2 = ModelArgs(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192,
                    qkv_bias=False, tie_word_embeddings=True)


def _never():
    raise AssertionError("the CPU plan must not profile")


def _host_with(monkeypatch, available: int) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))


def test_the_full_context_at_the_default_batch_is_capped_by_available_memory(monkeypatch):
    _host_with(monkeypatch, 20 * GIB)
    plan = plan_memory(EngineConfig(), SMOLLM2, 8192, _never)  # 64 x 8192 tokens would be 22.5 GiB
    assert plan.num_blocks * plan.block_bytes <= CPU_KV_SHARE * 20 * GIB
    assert plan.max_full_length_seqs >= 1 and "capped" in plan.describe() and "lower max_model_len" in plan.describe()


def test_a_plan_that_fits_is_what_the_settings_ask(monkeypatch):
    _host_with(monkeypatch, 20 * GIB)
    plan = plan_memory(EngineConfig(max_num_seqs=32), SMOLLM2, 2048, _never)
    assert plan.num_blocks == 32 * 2048 // 16 and "as configured" in plan.describe()


def test_no_room_for_one_sequence_is_refused_naming_the_knob(monkeypatch):
    _host_with(monkeypatch, 256 << 20)
    with pytest.raises(MemoryPlanError, match="lower max_model_len"):
        plan_memory(EngineConfig(), SMOLLM2, 8192, _never)
