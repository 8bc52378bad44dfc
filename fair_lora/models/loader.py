"""Load a Hugging Face model directory of the Llama family from safetensors only (pickle is refused)."""
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from fair_lora.errors import ModelFormatError
from fair_lora.layers.rotary import RotaryEmbedding
from fair_lora.models.llama import LlamaForCausalLM, ModelArgs

SUPPORTED = {"llama": False, "mistral": False, "qwen2": True}  # model_type -> q/k/v carry a bias
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def read_config(model_dir: Path) -> PretrainedConfig:
    if not (model_dir / "config.json").is_file():
        raise ModelFormatError(f"{model_dir}: no config.json; point `model` at a Hugging Face model directory")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if config.model_type not in SUPPORTED:
        raise ModelFormatError(
            f"{model_dir}/config.json: model_type {config.model_type!r} is not supported; use one of {sorted(SUPPORTED)}"
        )
    unsupported = {
        "attention_bias": getattr(config, "attention_bias", False),
        "mlp_bias": getattr(config, "mlp_bias", False),
        "hidden_act": getattr(config, "hidden_act", "silu") != "silu",
    }
    for key, present in unsupported.items():
        if present:
            raise ModelFormatError(f"{model_dir}/config.json: {key}={getattr(config, key)!r} is not supported")
    return config


def context_limit(config: PretrainedConfig) -> int:
    """Full attention equals sliding-window attention up to the window, so a windowed model is served up to it."""
    window = getattr(config, "sliding_window", None)
    in_effect = window is not None and getattr(config, "use_sliding_window", True)
    return min(config.max_position_embeddings, window) if in_effect else config.max_position_embeddings


def model_args(config: PretrainedConfig) -> ModelArgs:
    return ModelArgs(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=context_limit(config),
        qkv_bias=SUPPORTED[config.model_type],
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def rotary_from_config(config: PretrainedConfig, max_positions: int) -> RotaryEmbedding:
    # transformers >= 5 normalises rope settings into `rope_parameters`; older versions keep rope_theta and
    # rope_scaling (and real Llama-2 configs still carry those keys), so read either.
    params = getattr(config, "rope_parameters", None) or {
        "rope_theta": getattr(config, "rope_theta", 10000.0),
        **(getattr(config, "rope_scaling", None) or {}),
    }
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "dynamic":
        raise ModelFormatError("rope_type 'dynamic' is not supported (its frequencies change with the length)")
    if rope_type == "default":
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return RotaryEmbedding(inv_freq, scaling, max_positions)


def check_kernel_shapes(args: ModelArgs, device: str | torch.device) -> None:
    """Refuse, at load, a model the CUDA kernels cannot run (the CPU's torch references take any shape):
    the attention kernels' dot products need head_dim >= 16."""
    if torch.device(device).type == "cuda" and args.head_dim < 16:
        raise ModelFormatError(
            f"head_dim {args.head_dim} < 16: the CUDA attention kernels need head_dim >= 16; serve this model on "
            "the CPU (device: cpu) or use one with larger heads"
        )


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        why = f"only pickle weights ({', '.join(pickles)}), which are refused" if pickles else "no *.safetensors"
        raise ModelFormatError(f"{model_dir}: {why}; convert the checkpoint to safetensors")
    return files


def load_model(
    model_dir: str | Path, dtype: torch.dtype, device: str | torch.device, dummy: bool = False
) -> tuple[LlamaForCausalLM, PretrainedConfig]:
    """dummy: random weights (std 0.02, norms 1) made on the device from config.json alone, for benchmarks."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    args = model_args(config)
    rotary = rotary_from_config(config, args.max_position_embeddings).to(device)
    with torch.device("meta"):  # no memory for weights that the checkpoint overwrites anyway
        model = LlamaForCausalLM(args, rotary)
    if dummy:
        model = _random_weights(model, dtype, device)
        model.fuse_projections()
        return model, config
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for path in weight_files(model_dir):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name.endswith("rotary_emb.inv_freq"):  # a buffer old checkpoints saved; recomputed here
                        continue
                    if name not in params:
                        raise ModelFormatError(f"{path}: unexpected tensor {name!r} for a {config.model_type} model")
                    _assign(model, name, f.get_tensor(name).to(dtype=dtype, device=device))
                    loaded.add(name)
        except Exception as e:  # safetensors raises several types for truncated or corrupt files
            if isinstance(e, ModelFormatError):
                raise
            raise ModelFormatError(f"{path}: cannot read safetensors ({e})") from e
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise ModelFormatError(f"{model_dir}: weights missing from the safetensors files: {missing[:5]}")
    model.fuse_projections()
    return model.eval(), config


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_path, _, attr = name.rpartition(".")
    module = model.get_submodule(module_path)
    old = getattr(module, attr)
    if tuple(old.shape) != tuple(tensor.shape):
        raise ModelFormatError(f"weight {name}: shape {tuple(tensor.shape)}, config implies {tuple(old.shape)}")
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))


def _random_weights(model: LlamaForCausalLM, dtype: torch.dtype, device) -> LlamaForCausalLM:
    generator = torch.Generator(device=device).manual_seed(0)
    for name, param in list(model.named_parameters()):
        if name.endswith("norm.weight"):
            tensor = torch.ones(param.shape, dtype=dtype, device=device)
        else:
            tensor = torch.randn(param.shape, generator=generator, dtype=dtype, device=device) * 0.02
        _assign(model, name, tensor)
    if model.args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
