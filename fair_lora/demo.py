"""The embedded demo: a small Llama-family model, a byte-level tokenizer and PEFT adapters, made from a seed.

Everything is generated locally (nothing is downloaded) and lands in `root/<spec hash>/`:
`model/` (config.json, model.safetensors, tokenizer files) and `adapters/adapter-<i>/` (PEFT format).
"""
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

# Bump whenever the generator's output changes, so caches made by older code are not reused.
_FORMAT_VERSION = 1
_MANIFEST = "demo.json"
_CONFIGS: dict[str, type[PretrainedConfig]] = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
ARCHS = tuple(_CONFIGS)
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
_SPECIALS = (PAD, BOS, EOS)  # ids 0, 1, 2; the 256 bytes follow
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('message roles must be system, user or assistant') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class DemoSpec:
    seed: int = 0
    arch: str = "llama"  # "llama" | "mistral" | "qwen2" (Qwen2 has q/k/v bias)
    hidden_size: int = 64
    intermediate_size: int = 160
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    # Default init (std 0.02) leaves logits nearly tied, which makes greedy decoding fragile to compare.
    init_std: float = 0.2
    # Decisive logits, like a trained model's mostly are (0 keeps the plain random model above): the embedding
    # is drawn with std init_std * decisive, so the token's own direction dominates the residual stream, and
    # lm_head's row for successor(t) is t's embedding, for a seeded permutation `successor` of the vocabulary. Each
    # token then predicts its successor by a wide margin, and the layers (and adapters) change the choice only
    # where they compete with it. How often falls steeply as decisive grows, and the right value depends on the
    # model's size: ~25 for the default size, ~140 for hidden 256 x 4 layers (tests/test_bf16_agreement.py).
    decisive: float = 0.0
    num_adapters: int = 6
    ranks: tuple[int, ...] = (4, 8, 16)  # cycled over adapters
    alphas: tuple[int, ...] = (8, 16, 32, 12)  # cycled over adapters
    use_rslora_every: int = 0  # 0: no adapter uses rslora; N: adapters N-1, 2N-1, ... do
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # adapter index -> the subset of target_modules it targets; the rest target all of them
    adapter_targets: dict[int, tuple[str, ...]] = field(default_factory=lambda: {1: ("q_proj", "v_proj")})
    adapter_delta_ratio: float = 0.2  # ‖s·B·A‖ / ‖W‖ for every targeted projection

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.decisive < 0 or (self.decisive and self.tie_word_embeddings):
            raise ValueError("decisive must be >= 0, and 0 with tied embeddings (lm_head is built apart)")
        if self.num_adapters < 0 or not self.ranks or not self.alphas:
            raise ValueError("num_adapters must be >= 0 and ranks, alphas non-empty")
        for index, targets in self.adapter_targets.items():
            if not targets or not set(targets) <= set(self.target_modules):
                raise ValueError(f"adapter_targets[{index}] must be a non-empty subset of target_modules")


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    adapters: dict[str, Path]  # "adapter-<i>" -> PEFT adapter directory


def default_demo_root() -> Path:
    return Path(os.environ.get("FAIR_LORA_DEMO_DIR") or Path.home() / ".cache" / "fair_lora" / "demo")


# Fields added after format 1, left out at their defaults so that older specs keep their hash (and their cache).
_LATER_FIELDS = {"decisive": 0.0}


def spec_hash(spec: DemoSpec) -> str:
    fields = {k: v for k, v in asdict(spec).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    text = json.dumps({"format": _FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_demo(root: str | Path, spec: DemoSpec = DemoSpec()) -> DemoAssets:
    """Create the demo under `root/<spec hash>/`, or reuse it if a previous run completed it."""
    root = Path(root).expanduser().resolve()
    final = root / spec_hash(spec)
    if not (final / _MANIFEST).is_file():
        root.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed in one step: a crash leaves only a dot-directory that is never read.
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the published cache from other users
            _build(tmp, final, spec)
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _assets(final, spec)


def _assets(final: Path, spec: DemoSpec) -> DemoAssets:
    names = [f"adapter-{i}" for i in range(spec.num_adapters)]
    return DemoAssets(model_dir=final / "model", adapters={name: final / "adapters" / name for name in names})


def _publish(tmp: Path, final: Path) -> None:
    try:
        tmp.rename(final)
    except OSError:
        if not (final / _MANIFEST).is_file():  # a concurrent run that finished first is fine; anything else is not
            raise


def _build(tmp: Path, final: Path, spec: DemoSpec) -> None:
    staged, published = _assets(tmp, spec), _assets(final, spec)
    tokenizer = _write_tokenizer(staged.model_dir, spec)
    _log(f"tokenizer ({tokenizer.get_vocab_size()} tokens)", published.model_dir)
    base = _make_model(spec, vocab_size=tokenizer.get_vocab_size())
    base.save_pretrained(staged.model_dir)
    _log("model", published.model_dir)
    for index, name in enumerate(staged.adapters):
        _write_adapter(base, spec, index, staged.adapters[name], published.model_dir)
        _log(name, published.adapters[name])
    manifest = {"spec": asdict(spec), "model_dir": "model", "adapters": {n: f"adapters/{n}" for n in staged.adapters}}
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _log(what: str, path: Path) -> None:
    print(f"fair_lora demo: wrote {what} -> {path}", file=sys.stderr)


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte 0..255 that the ByteLevel pre-tokenizer emits (GPT-2's map)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    unprintable = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(unprintable)) for b in range(256)]


def _write_tokenizer(model_dir: Path, spec: DemoSpec) -> Tokenizer:
    vocab = {token: i for i, token in enumerate([*_SPECIALS, *_byte_symbols()])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in _SPECIALS])
    model_dir.mkdir(parents=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer


def _model_config(spec: DemoSpec, vocab_size: int) -> PretrainedConfig:
    # Sliding windows are off so that all three architectures attend over the full context.
    extra = {} if spec.arch == "llama" else {"sliding_window": None}
    return _CONFIGS[spec.arch](
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        rope_scaling=spec.rope_scaling,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=_SPECIALS.index(PAD),
        bos_token_id=_SPECIALS.index(BOS),
        eos_token_id=_SPECIALS.index(EOS),
        dtype="float32",
        **extra,
    )


def _make_model(spec: DemoSpec, vocab_size: int) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_config(_model_config(spec, vocab_size), dtype=torch.float32)
    generator = torch.Generator().manual_seed(_derived_seed(spec.seed, "model"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.normal_(0.0, spec.init_std / 2, generator=generator)
            elif spec.decisive and param is model.get_input_embeddings().weight:
                param.normal_(0.0, spec.init_std * spec.decisive, generator=generator)
            else:
                param.normal_(0.0, spec.init_std, generator=generator)
        if spec.decisive:  # after every draw above, so the other weights are those of decisive=0
            order = torch.Generator().manual_seed(_derived_seed(spec.seed, "successor"))
            successor = torch.randperm(vocab_size, generator=order)
            # Divided back to the scale of the other weights.
            model.get_output_embeddings().weight[successor] = model.get_input_embeddings().weight / spec.decisive
    return model.eval()


def _derived_seed(seed: int, label: str) -> int:
    """Independent streams per artifact, so adding an adapter does not change the others."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{label}".encode()).digest()[:8], "little")


def _lora_config(spec: DemoSpec, index: int) -> LoraConfig:
    every = spec.use_rslora_every
    return LoraConfig(
        r=spec.ranks[index % len(spec.ranks)],
        lora_alpha=spec.alphas[index % len(spec.alphas)],
        target_modules=list(spec.adapter_targets.get(index, spec.target_modules)),
        lora_dropout=0.0,
        use_rslora=every > 0 and (index + 1) % every == 0,
        task_type="CAUSAL_LM",
    )


def _write_adapter(base: PreTrainedModel, spec: DemoSpec, index: int, out: Path, model_dir: Path) -> None:
    peft_model = get_peft_model(copy.deepcopy(base), _lora_config(spec, index))
    generator = torch.Generator().manual_seed(_derived_seed(spec.seed, f"adapter-{index}"))
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                _randomize_lora(module, spec.adapter_delta_ratio, generator)
    # get_peft_model records the in-memory model's empty name; the adapter must point at the saved model.
    peft_model.peft_config["default"].base_model_name_or_path = str(model_dir)
    peft_model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)


def _randomize_lora(module: LoraLayer, ratio: float, generator: torch.Generator) -> None:
    """Random A and B, B scaled so that ‖s·B·A‖ = ratio·‖W‖: visible in greedy output, logits stay sane."""
    a, b = module.lora_A["default"].weight, module.lora_B["default"].weight  # [r, H_in], [H_out, r]
    a.normal_(0.0, a.shape[1] ** -0.5, generator=generator)
    b.normal_(0.0, 1.0, generator=generator)
    delta = module.scaling["default"] * (b @ a)
    b.mul_(ratio * module.get_base_layer().weight.norm() / delta.norm())
