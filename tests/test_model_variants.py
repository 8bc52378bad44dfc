"""The same loader and decoder serve the Llama family: Qwen2 (q/k/v bias), Mistral, tied embeddings and
scaled rope, each checked against transformers + peft with a hot adapter and a cold one in one batch."""
import pytest

from fair_lora import ModelFormatError
from fair_lora.demo import DemoSpec, make_demo
from tests.engine_helpers import PROMPTS, assert_matches_oracle, greedy, make_engine
from tests.hf_oracle import HFOracle

VARIANTS = {
    "qwen2": DemoSpec(arch="qwen2", num_adapters=2),
    "mistral": DemoSpec(arch="mistral", num_adapters=2, seed=3),
    "tied-llama3-rope": DemoSpec(
        num_adapters=2,
        tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 128},
        seed=5,
    ),
    "linear-rope": DemoSpec(num_adapters=2, rope_scaling={"rope_type": "linear", "factor": 2.0}, seed=6),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_peft(tmp_path_factory, variant):
    assets = make_demo(tmp_path_factory.mktemp(variant), VARIANTS[variant])
    oracle = HFOracle(assets.model_dir, assets.adapters)
    engine = make_engine(assets)
    engine.set_hot_adapter("adapter-0")
    adapters = ["adapter-0", "adapter-1", None, "adapter-1"]
    outputs = engine.generate(PROMPTS[:4], adapters, greedy(8))
    assert_matches_oracle(engine, oracle, outputs, 8)


def test_pickle_only_model_is_refused(tmp_path, demo):
    (tmp_path / "config.json").write_bytes((demo.model_dir / "config.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    from fair_lora.models.loader import load_model
    import torch

    with pytest.raises(ModelFormatError, match="pickle"):
        load_model(tmp_path, torch.float32, "cpu")


@pytest.mark.parametrize("setting", [{"mlp_bias": True}, {"attention_bias": True}, {"hidden_act": "gelu"}])
def test_config_features_the_decoder_lacks_are_refused(tmp_path, demo, setting):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(demo.model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **setting}))
    from fair_lora.models.loader import read_config

    with pytest.raises(ModelFormatError, match=next(iter(setting))):
        read_config(model)
