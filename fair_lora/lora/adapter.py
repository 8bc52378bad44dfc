"""One PEFT LoRA adapter, read from disk and checked against the base model before anything else sees it."""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from fair_lora.errors import AdapterFormatError, AdapterNameError, AdapterPathError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
KEY_PATTERN = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight")
# PEFT options that change the math beyond y += s·(x·Aᵀ)·Bᵀ on the targeted projections.
ACCEPTED_OPTIONS = {
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "modules_to_save": (None, []),
    "bias": ("none", None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
}


@dataclass
class LoRAAdapter:
    name: str
    path: Path
    rank: int
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A [r, H_in], B [H_out, r]), host

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise AdapterNameError(
            f"adapter name {name!r} is invalid: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit, with no path separators"
        )
    return name


def check_path(path: str | Path, roots: list[Path]) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise AdapterPathError(
            f"adapter path {path} is outside the configured adapter roots {[str(r) for r in roots]}"
        )
    if not resolved.is_dir():
        raise AdapterFormatError(f"adapter path {path} is not a directory")
    return resolved


def read_adapter_config(directory: Path, max_rank: int) -> tuple[int, float]:
    """Returns (rank, scaling) after checking every option fair_lora relies on."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterFormatError(f"{config_path}: missing; a PEFT LoRA adapter directory needs it")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFormatError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{config_path}: peft_type must be LORA")
    for option, accepted in ACCEPTED_OPTIONS.items():
        if config.get(option) not in accepted:
            raise AdapterFormatError(
                f"{config_path}: {option}={config[option]!r} is not supported (accepted: {accepted[0]!r})"
            )
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank:
        raise AdapterFormatError(f"{config_path}: r={rank!r} must be an integer in [1, {max_rank}] (max_lora_rank)")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise AdapterFormatError(f"{config_path}: lora_alpha={alpha!r} must be a finite number")
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = [p for p in PICKLE_FILES if (directory / p).exists()]
        why = f"only pickle weights {pickles}, which are refused" if pickles else f"no {WEIGHTS_FILE}"
        raise AdapterFormatError(f"{directory}: {why}; save the adapter with safe_serialization=True")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # truncated or corrupt files raise SafetensorError, OSError or ValueError
        raise AdapterFormatError(f"{weights_path}: not a readable safetensors file ({e})") from e


def load_adapter(
    name: str,
    path: str | Path,
    roots: list[Path],
    shapes: dict[str, tuple[int, int]],
    max_rank: int,
    dtype: torch.dtype,
) -> LoRAAdapter:
    """shapes: module path -> (H_in, H_out) of every projection an adapter may target."""
    name = check_name(name)
    directory = check_path(path, roots)
    rank, scaling = read_adapter_config(directory, max_rank)
    tensors = read_weights(directory)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = KEY_PATTERN.fullmatch(key)
        if match is None:
            raise AdapterFormatError(f"{directory / WEIGHTS_FILE}: tensor {key!r} is not a LoRA A/B weight")
        module = match["module"]
        if module not in shapes or module.rsplit(".", 1)[-1] not in TARGETS:
            raise AdapterFormatError(
                f"{directory / WEIGHTS_FILE}: {key!r} targets unknown module {module!r}; supported: {', '.join(TARGETS)}"
            )
        parts.setdefault(module, {})[match["part"]] = tensor
    if not parts:
        raise AdapterFormatError(f"{directory / WEIGHTS_FILE}: holds no LoRA weights")
    weights = {m: _checked_pair(directory, m, p, rank, shapes[m], dtype) for m, p in parts.items()}
    return LoRAAdapter(name=name, path=directory, rank=rank, scaling=scaling, weights=weights)


def _checked_pair(
    directory: Path, module: str, part: dict[str, torch.Tensor], rank: int, shape: tuple[int, int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    where = f"{directory / WEIGHTS_FILE}: {module}"
    if set(part) != {"A", "B"}:
        raise AdapterFormatError(f"{where}: needs both lora_A and lora_B")
    a, b = part["A"], part["B"]
    h_in, h_out = shape
    if tuple(a.shape) != (rank, h_in) or tuple(b.shape) != (h_out, rank):
        raise AdapterFormatError(
            f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} must be {(rank, h_in)} and {(h_out, rank)}"
            " (r from adapter_config.json, sizes from the base model)"
        )
    if not a.is_floating_point() or not b.is_floating_point():
        raise AdapterFormatError(f"{where}: weights must be floating point")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterFormatError(f"{where}: weights contain NaN or infinity")
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()
