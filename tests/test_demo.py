import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import fair_lora.demo as demo_module
from fair_lora.cli import main
from fair_lora.demo import ARCHS, DemoAssets, DemoSpec, default_demo_root, make_demo, spec_hash

PROMPTS = ["Hello, world!", "The quick brown fox", "🙂 naïve 漢字"]
SMALL = DemoSpec(num_adapters=2)


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def arch_demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DemoAssets]:
    root = tmp_path_factory.mktemp("archs")
    return {arch: make_demo(root, DemoSpec(arch=arch, num_adapters=1)) for arch in ARCHS}


def weight_files(assets: DemoAssets) -> list[Path]:
    adapter_files = [path / "adapter_model.safetensors" for path in assets.adapters.values()]
    return [assets.model_dir / "model.safetensors", *adapter_files]


def greedy(model: torch.nn.Module, input_ids: list[int], steps: int = 20) -> tuple[list[int], list[float]]:
    """Greedy tokens and, per step, the gap between the top-1 and top-2 logits."""
    ids, gaps = list(input_ids), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top = logits.topk(2).values
            gaps.append((top[0] - top[1]).item())
            ids.append(int(logits.argmax()))
    return ids[len(input_ids):], gaps


def greedy_outputs(model: torch.nn.Module, model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [greedy(model, tokenizer(prompt).input_ids, steps=8)[0] for prompt in PROMPTS[:2]]


def load_base(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_same_seed_gives_byte_identical_safetensors(tmp_path: Path) -> None:
    first, second = make_demo(tmp_path / "a", SMALL), make_demo(tmp_path / "b", SMALL)
    for a, b in zip(weight_files(first), weight_files(second), strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_different_seed_gives_different_weights(tmp_path: Path) -> None:
    first, second = make_demo(tmp_path, SMALL), make_demo(tmp_path, DemoSpec(seed=1, num_adapters=2))
    assert first.model_dir != second.model_dir
    for a, b in zip(weight_files(first), weight_files(second), strict=True):
        assert a.read_bytes() != b.read_bytes(), a.name


def test_different_specs_land_in_different_directories(tmp_path: Path) -> None:
    assert spec_hash(SMALL) != spec_hash(DemoSpec(num_adapters=2, rope_theta=500000.0))
    assets = make_demo(tmp_path, SMALL)
    assert assets.model_dir == tmp_path.resolve() / spec_hash(SMALL) / "model"
    assert list(assets.adapters) == ["adapter-0", "adapter-1"]


def test_completed_demo_is_reused_without_rewriting(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    first = make_demo(tmp_path, SMALL)
    stamps = [path.stat().st_mtime_ns for path in weight_files(first)]
    capfd.readouterr()
    assert make_demo(tmp_path, SMALL) == first
    assert [path.stat().st_mtime_ns for path in weight_files(first)] == stamps
    assert capfd.readouterr().err == ""


def test_crashed_run_leaves_nothing_and_next_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / f".{spec_hash(SMALL)}-killed"  # what a SIGKILLed run leaves behind
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"truncated")

    def crash(*args: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(demo_module, "_write_adapter", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            make_demo(tmp_path, SMALL)
    assert sorted(path.name for path in tmp_path.iterdir()) == [stale.name]
    assets = make_demo(tmp_path, SMALL)
    assert all(path.is_file() for path in weight_files(assets))


def test_tokenizer_round_trips_utf8_and_matches_model_config(default_demo: DemoAssets) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_demo.model_dir)
    config = json.loads((default_demo.model_dir / "config.json").read_text())
    assert len(tokenizer) == config["vocab_size"]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        config["pad_token_id"], config["bos_token_id"], config["eos_token_id"])
    for text in ["", "plain ascii", " leading  spaces\n\ttabs", *PROMPTS, "emoji 👩‍👩‍👧 ZWJ and \u0000 nul"]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) == 1 + len(text.encode())
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_formats_roles_and_generation_prompt(default_demo: DemoAssets) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_demo.model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi 🙂</s>\n<|assistant|>\n"
    assert not tokenizer.apply_chat_template(messages, tokenize=False).endswith("<|assistant|>\n")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert encoded["input_ids"] == tokenizer(text, add_special_tokens=False).input_ids
    with pytest.raises(Exception, match="roles must be"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_loads_in_transformers(arch_demos: dict[str, DemoAssets], arch: str) -> None:
    model = load_base(arch_demos[arch].model_dir)
    assert model.config.model_type == arch
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert (q_proj.bias is not None) == (arch == "qwen2")
    if q_proj.bias is not None:
        assert q_proj.bias.abs().min() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_logits_are_well_separated(arch_demos: dict[str, DemoAssets], arch: str) -> None:
    model_dir = arch_demos[arch].model_dir
    model, tokenizer = load_base(model_dir), AutoTokenizer.from_pretrained(model_dir)
    gaps = []
    for prompt in PROMPTS:
        tokens, prompt_gaps = greedy(model, tokenizer(prompt).input_ids)
        assert len(set(tokens)) > 5, tokens
        gaps += prompt_gaps
    assert sum(gap > 1e-3 for gap in gaps) >= 0.9 * len(gaps)


def test_adapter_configs_follow_spec(tmp_path: Path, default_demo: DemoAssets) -> None:
    configs = [json.loads((path / "adapter_config.json").read_text()) for path in default_demo.adapters.values()]
    assert [c["r"] for c in configs] == [4, 8, 16, 4, 8, 16]
    assert [c["lora_alpha"] for c in configs] == [8, 16, 32, 12, 8, 16]
    assert sorted(configs[1]["target_modules"]) == ["q_proj", "v_proj"]
    assert sorted(configs[0]["target_modules"]) == sorted(DemoSpec.target_modules)
    assert all(c["base_model_name_or_path"] == str(default_demo.model_dir) for c in configs)
    assert not any(c["use_rslora"] for c in configs)
    rslora = make_demo(tmp_path, DemoSpec(num_adapters=4, use_rslora_every=2))
    flags = [json.loads((p / "adapter_config.json").read_text())["use_rslora"] for p in rslora.adapters.values()]
    assert flags == [False, True, False, True]


def test_each_adapter_changes_greedy_output(default_demo: DemoAssets) -> None:
    model_dir = default_demo.model_dir
    outputs = {"base": greedy_outputs(load_base(model_dir), model_dir)}
    for name, path in default_demo.adapters.items():
        outputs[name] = greedy_outputs(PeftModel.from_pretrained(load_base(model_dir), path).eval(), model_dir)
    for prompt, *per_model in zip(PROMPTS, *outputs.values()):
        assert len(set(map(tuple, per_model))) == len(per_model), f"two models agree on {prompt!r}"


def test_cli_demo_prints_paths_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--seed", "3", "--num-adapters", "2", "--arch", "qwen2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = make_demo(tmp_path, DemoSpec(seed=3, num_adapters=2, arch="qwen2"))
    adapters = {name: str(path) for name, path in expected.adapters.items()}
    assert printed == {"model_dir": str(expected.model_dir), "adapters": adapters}


def test_default_demo_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAIR_LORA_DEMO_DIR", str(tmp_path))
    assert default_demo_root() == tmp_path
    monkeypatch.delenv("FAIR_LORA_DEMO_DIR")
    assert default_demo_root() == Path.home() / ".cache" / "fair_lora" / "demo"


@pytest.mark.parametrize("bad", [{"arch": "gpt2"}, {"adapter_targets": {0: ("lm_head",)}}, {"ranks": ()}])
def test_bad_spec_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        DemoSpec(**bad)
