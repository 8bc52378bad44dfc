"""The model and adapters of S-LoRA's model settings, as launch_server.py serves them and run_exp.py names them.

  S1    Llama-7B shapes, rank 8                      (S-LoRA: dummy-lora-7b-rank-8)
  S2    Llama-7B shapes, ranks 64, 32, 16, 8 cycled  (dummy-lora-7b-rank-64, -32, -16, -8)
  S4    Llama-13B shapes, ranks 64, 32, 16 cycled    (dummy-lora-13b-rank-64, -32, -16)
  R16   Llama-7B shapes, rank 16                     (not S-LoRA's: the engine benchmarks' adapters)
  Real  --model DIR, --adapter-dir DIR [DIR ...]: real PEFT adapters, each served under several names
  Demo  the embedded demo model (CPU) and its six adapters, each served under several names

Adapter names follow S-LoRA's get_adapter_dirs: for source adapters d_0 … d_{k-1}, the i-th name is
`d_{i mod k}-{i div k}` (d_0-0, d_1-0, …, d_0-1, …), and a configuration of N adapters uses the first N. Synthetic
settings have no weights: their model directory holds config.json only (serve it with load_format `dummy`), and
each adapter name gets its own seeded random PEFT adapter on all seven projections, written once under the cache
directory and reused. Real and Demo names point at their source adapter's directory: no copies on disk.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common.report import REPO

SYNTHETIC = {  # setting -> (base config in configs/, S-LoRA's adapter directory name per rank)
    "S1": ("llama-2-7b", {8: "dummy-lora-7b-rank-8"}),
    "S2": ("llama-2-7b", {r: f"dummy-lora-7b-rank-{r}" for r in (64, 32, 16, 8)}),
    "S4": ("llama-2-13b", {r: f"dummy-lora-13b-rank-{r}" for r in (64, 32, 16)}),
    "R16": ("llama-2-7b", {16: "dummy-lora-7b-rank-16"}),
}
SETTINGS = (*SYNTHETIC, "Real", "Demo")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def default_cache_dir() -> Path:
    return Path(os.environ.get("FAIR_LORA_BENCH_DIR") or Path.home() / ".cache" / "fair_lora" / "bench")


def adapter_names(sources: list[str], num_adapters: int) -> list[str]:
    """The first `num_adapters` of S-LoRA's names for these source adapters (see the module docstring)."""
    return [f"{sources[i % len(sources)]}-{i // len(sources)}" for i in range(num_adapters)]


@dataclass
class Assets:
    """What the app serves: `model` None is the embedded demo; `adapters` maps each served name to a directory."""

    model: str | None
    adapters: dict[str, str]
    max_rank: int
    demo_dir: str | None = None
    # Synthetic settings: each adapter's (rank, directory), and the model's config.json (the adapters' shapes).
    synthetic: dict[str, tuple[int, Path]] = field(default_factory=dict)
    config: dict | None = None

    def write(self) -> None:
        """Create the synthetic model directory and adapters that the cache does not hold yet."""
        if self.config is None:
            return
        model_dir = Path(self.model)
        if not (model_dir / "config.json").is_file():
            model_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(model_dir / "config.json", json.dumps(self.config, indent=2))
        missing = {n: (r, d) for n, (r, d) in self.synthetic.items() if not (d / "adapter_config.json").is_file()}
        for i, (name, (rank, directory)) in enumerate(missing.items(), 1):
            write_random_adapter(directory, self.config, rank, seed_label=f"{directory.parent.name}/{name}")
            print(f"\rwrote synthetic adapter {i}/{len(missing)}: {directory}", end="\n" if i == len(missing) else "",
                  file=sys.stderr, flush=True)


def plan_assets(
    setting: str,
    num_adapters: int,
    cache_dir: Path | None = None,
    model: str | None = None,
    adapter_dirs: list[str] | None = None,
    demo_dir: str | None = None,
) -> Assets:
    """The model and the `num_adapters` served adapters of a setting; synthetic files are written by write()."""
    if setting in SYNTHETIC:
        return _synthetic(setting, num_adapters, cache_dir or default_cache_dir(), model)
    if setting == "Real":
        if not model or not adapter_dirs:
            raise ValueError("--model-setting Real needs --model DIR and --adapter-dir DIR [DIR ...]")
        sources = {Path(d).resolve().name: str(Path(d).resolve()) for d in adapter_dirs}
        if len(sources) < len(adapter_dirs):
            raise ValueError(f"--adapter-dir {' '.join(adapter_dirs)}: two directories share a name, and the served "
                             "names <directory name>-<i> would collide")
        return _copies(model, sources, num_adapters, None)
    if setting == "Demo":
        from fair_lora.demo import default_demo_root, make_demo  # torch, transformers, peft: only when needed

        root = Path(demo_dir) if demo_dir else default_demo_root()
        demo = make_demo(root)
        return _copies(None, {n: str(p) for n, p in demo.adapters.items()}, num_adapters, str(root))
    raise ValueError(f"unknown model setting {setting!r}; choose one of {SETTINGS}")


def _synthetic(setting: str, num_adapters: int, cache_dir: Path, model: str | None) -> Assets:
    config_name, dirs_by_rank = SYNTHETIC[setting]
    config_path = Path(model) / "config.json" if model else REPO / "configs" / f"{config_name}.json"
    config = json.loads(config_path.read_text())
    model_dir = Path(model) if model else cache_dir / "models" / config_name
    # Adapters are keyed by the shapes they fit, so a --model of other shapes never picks up the wrong files.
    shapes = hashlib.sha256(json.dumps(_shape_fields(config), sort_keys=True).encode()).hexdigest()[:12]
    rank_of = {name: rank for rank, name in dirs_by_rank.items()}
    names = adapter_names(list(rank_of), num_adapters)
    synthetic = {n: (rank_of[n.rsplit("-", 1)[0]], cache_dir / "adapters" / shapes / n) for n in names}
    return Assets(
        model=str(model_dir),
        adapters={n: str(path) for n, (_, path) in synthetic.items()},
        max_rank=max(rank_of.values()),
        synthetic=synthetic,
        config=config,
    )


def _copies(model: str | None, sources: dict[str, str], num_adapters: int, demo_dir: str | None) -> Assets:
    names = adapter_names(list(sources), num_adapters)
    adapters = {n: sources[n.rsplit("-", 1)[0]] for n in names}
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text())["r"] for p in set(adapters.values())]
    return Assets(model=model, adapters=adapters, max_rank=max(ranks, default=1), demo_dir=demo_dir)


def _shape_fields(config: dict) -> dict:
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {k: config.get(k) for k in keys}


def projection_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(H_in, H_out) of each of the seven projections of a Llama-family layer."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def write_random_adapter(directory: Path, config: dict, rank: int, seed_label: str) -> None:
    """A PEFT LoRA adapter (float16) on every projection of every layer, seeded by `seed_label`.

    A ~ N(0, 1/H_in) and B ~ N(0, 0.01²): both non-zero (PEFT's fresh B = 0 would make the correction a no-op
    that a kernel could skip), and small, so a dummy model's activations stay finite."""
    import torch  # here, not at the top: run_exp.py reads adapter names from this module without needing torch
    from safetensors.torch import save_file

    seed = int.from_bytes(hashlib.sha256(seed_label.encode()).digest()[:8], "little")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for proj, (h_in, h_out) in projection_shapes(config).items():
            prefix = f"base_model.model.model.layers.{layer}.{'self_attn' if proj in ATTENTION else 'mlp'}.{proj}"
            a = torch.randn(rank, h_in, generator=generator) * h_in**-0.5
            b = torch.randn(h_out, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.half()
            tensors[f"{prefix}.lora_B.weight"] = b.half()
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": [*ATTENTION, *MLP], "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "base_model_name_or_path": None,
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed in one step, so a crash never leaves a half adapter that later runs would reuse.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        tmp.chmod(0o755)
        tmp.rename(directory)
    except OSError:
        if not (directory / "adapter_config.json").is_file():  # another launcher finishing first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
