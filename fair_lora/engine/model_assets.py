"""What the engine reads besides the weights: where its model and adapters are (the configured ones, the real
SmolLM2 model and its shipped adapters, or the tiny random demo's, made on first use), the model directory's
tokenizer, and the ids that end a sequence."""
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig

from fair_lora.config import EngineConfig
from fair_lora.errors import ModelFormatError
from fair_lora.real_model import SMOLLM2


def resolve_assets(config: EngineConfig) -> tuple[Path, dict[str, str]]:
    """(model directory, {adapter name: directory}) to load. `model` is a directory, SMOLLM2 (the real model
    converted in the cache, with its shipped adapters), or None (the demo)."""
    if config.model == SMOLLM2 and not Path(SMOLLM2).is_dir():  # a directory of that name in the cwd wins
        from fair_lora.real_model import smollm2_adapters, smollm2_model_dir

        shipped = {n: str(p) for n, p in smollm2_adapters().items()}
        return smollm2_model_dir(), {**shipped, **config.adapters}
    if config.model is not None:
        if not (Path(config.model) / "config.json").is_file():  # before the tokenizer, which would look on the Hub
            raise ModelFormatError(
                f"model {config.model!r}: no config.json there; point it at a Hugging Face model directory, or use "
                f"{SMOLLM2!r} (the real model) or null (the tiny random demo model)"
            )
        return Path(config.model), dict(config.adapters)
    from fair_lora.demo import default_demo_root, make_demo

    assets = make_demo(Path(config.demo_dir) if config.demo_dir else default_demo_root())
    return assets.model_dir, {**{n: str(p) for n, p in assets.adapters.items()}, **config.adapters}


def load_tokenizer(model_dir: Path, load_format: str):
    has_tokenizer = any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer.model"))
    if not has_tokenizer and load_format == "dummy":
        return None  # a dummy-weight benchmark model may come without one; it then takes token ids only
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def eos_ids(hf_config: PretrainedConfig, tokenizer) -> set[int]:
    eos = hf_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
