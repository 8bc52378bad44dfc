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
    "layer_replication": (None, []),
}
MAX_SCALING = 1000.0  # far above any trained adapter's alpha / r; beyond it a merge would swamp the base weights
DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass
class LoRAAdapter:
    name: str
    path: Path
    rank: int
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A [r, H_in], B [H_out, r]), host


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise AdapterNameError(
            f"adapter name {name!r} is invalid: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit, with no path separators"
        )
    return name


def check_path(path: str | Path, roots: list[Path]) -> Path:
    try:
        resolved = Path(path).expanduser().resolve()
        inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
        is_dir = inside and resolved.is_dir()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name past the system's limits, an unknown ~user
        raise AdapterPathError(f"adapter path {str(path)!r} is not a usable path ({e}); name a directory") from e
    if not inside:
        raise AdapterPathError(
            f"adapter path {path} is outside the configured adapter roots {[str(r) for r in roots]}"
        )
    if not is_dir:
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
    scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    if abs(scaling) > MAX_SCALING:
        raise AdapterFormatError(f"{config_path}: lora_alpha={alpha} gives a scaling of {scaling:g}, above {MAX_SCALING:g}")
    return rank, scaling


def check_file(path: Path, roots: list[Path]) -> Path:
    """A file inside an accepted directory may still be a symlink to anywhere: resolve and check it too."""
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise AdapterPathError(f"{path} resolves to {resolved}, outside the configured adapter roots")
    return resolved


def read_weights(
    directory: Path, roots: list[Path], rank: int, shapes: dict[str, tuple[int, int]]
) -> dict[str, dict[str, torch.Tensor]]:
    """module path -> {"A": [r, H_in], "B": [H_out, r]}; names, dtypes and shapes are checked from the header
    before any tensor is read, so a hostile file cannot make us allocate what it declares."""
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        pickles = [p for p in PICKLE_FILES if (directory / p).exists()]
        why = f"only pickle weights {pickles}, which are refused" if pickles else f"no {WEIGHTS_FILE}"
        raise AdapterFormatError(f"{directory}: {why}; save the adapter with safe_serialization=True")
    check_file(weights_path, roots)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            for key in f.keys():
                header = f.get_slice(key)
                module, part = _expected(weights_path, key, header.get_dtype(), tuple(header.get_shape()), rank, shapes)
                if part in parts.setdefault(module, {}):
                    raise AdapterFormatError(f"{weights_path}: {module} has two lora_{part} tensors")
                parts[module][part] = f.get_tensor(key)
    except AdapterFormatError:
        raise
    except Exception as e:  # truncated or corrupt files raise SafetensorError, OSError or ValueError
        raise AdapterFormatError(f"{weights_path}: not a readable safetensors file ({e})") from e
    return parts


def _expected(
    path: Path, key: str, dtype: str, shape: tuple[int, ...], rank: int, shapes: dict[str, tuple[int, int]]
) -> tuple[str, str]:
    match = KEY_PATTERN.fullmatch(key)
    if match is None:
        raise AdapterFormatError(f"{path}: tensor {key!r} is not a LoRA A/B weight")
    module, part = match["module"], match["part"]
    if module not in shapes or module.rsplit(".", 1)[-1] not in TARGETS:
        raise AdapterFormatError(f"{path}: {key!r} targets unknown module {module!r}; supported: {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise AdapterFormatError(f"{path}: {key!r} has dtype {dtype}; use float32, float16 or bfloat16")
    h_in, h_out = shapes[module]
    want = (rank, h_in) if part == "A" else (h_out, rank)
    if shape != want:
        raise AdapterFormatError(
            f"{path}: {module} lora_{part} is {shape} but must be {want} (r from adapter_config.json, sizes from the"
            " base model)"
        )
    return module, part


def check_fits(adapter: LoRAAdapter, shapes: dict[str, tuple[int, int]], max_rank: int) -> None:
    """An adapter built in memory (benchmarks) must fit the base model as a loaded one is checked to."""
    for path, (a, b) in adapter.weights.items():
        fits = path in shapes and (a.shape[1], b.shape[0]) == shapes[path]
        if not fits or not a.shape[0] == b.shape[1] == adapter.rank <= max_rank:
            raise AdapterFormatError(f"in-memory adapter {adapter.name!r}: {path} does not fit the base model")


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
    try:
        check_file(directory / CONFIG_FILE, roots)
        rank, scaling = read_adapter_config(directory, max_rank)
        parts = read_weights(directory, roots, rank, shapes)
    except OSError as e:  # no permission, or a file name that takes the directory's path past the system's limit
        raise AdapterFormatError(f"{directory}: cannot read the adapter's files ({e})") from e
    if not parts:
        raise AdapterFormatError(f"{directory / WEIGHTS_FILE}: holds no LoRA weights")
    weights = {m: _checked_pair(directory, m, p, dtype) for m, p in parts.items()}
    return LoRAAdapter(name=name, path=directory, rank=rank, scaling=scaling, weights=weights)


def _checked_pair(
    directory: Path, module: str, part: dict[str, torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    where = f"{directory / WEIGHTS_FILE}: {module}"
    if set(part) != {"A", "B"}:
        raise AdapterFormatError(f"{where}: needs both lora_A and lora_B")
    # Cast first: a finite float64 (or float32 above 65504 for a float16 model) can become infinite.
    a, b = part["A"].to(dtype).contiguous(), part["B"].to(dtype).contiguous()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterFormatError(f"{where}: weights contain NaN or infinity (in the engine's {dtype})")
    return a, b
