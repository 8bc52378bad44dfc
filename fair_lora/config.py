"""Engine configuration: one dataclass, validated once, passed explicitly."""
import os
import warnings
from dataclasses import InitVar, dataclass, field

import torch

from fair_lora.hot_adapter.popularity import PopularityConfig

MODES = ("fair", "slora")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    model: str | None = None  # a Hugging Face model directory; None: the embedded demo model
    load_format: str = "safetensors"  # "dummy": random weights from config.json alone (benchmarks)
    adapters: dict[str, str] = field(default_factory=dict)  # name -> PEFT adapter directory
    adapter_roots: list[str] = field(default_factory=list)  # empty: the parents of `adapters`' directories
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "fair"  # "fair": merge the hot adapter + correction; "slora": never merge
    max_lora_rank: int = 64
    max_adapter_slots: int = 16  # device slots; more adapters stay on the host and swap in (LRU)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_waiting: int = 4096  # add_request beyond this raises QueueFullError
    block_size: int = 16
    # KV cache size. At most one of num_kv_blocks / num_kv_tokens; with neither, CUDA gives the cache
    # gpu_memory_utilization of the device minus weights, adapter slots, the pristine copy and the activation
    # peak, and the CPU sizes it for max_num_seqs sequences of max_model_len.
    num_kv_blocks: int | None = None
    num_kv_tokens: int | None = None
    gpu_memory_utilization: float = 0.90
    scheduling_policy: str = "fcfs"  # "fcfs" or "vtc" (fair share of tokens across clients)
    client_weights: dict[str, float] = field(default_factory=dict)  # vtc: client (adapter) -> weight, default 1
    fair_weights: InitVar[dict[str, float] | None] = None  # deprecated: client_weights's old name
    # Launch step N+1 before reading step N's tokens, so the host's work overlaps the device's; outputs come one
    # step late. None: on for CUDA, off on the CPU (where it gains nothing).
    async_scheduling: bool | None = None
    cuda_graphs: bool = True  # on CUDA, replay decode steps from captured graphs (batch sizes up to 256)
    warmup: bool = True  # on CUDA, compile kernels, capture graphs and load adapter slots before serving
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    # auto_hot merges are trials: kept only if this many merged decode steps cost less per token than unmerged ones
    # (hot_adapter/merge_gain.py); 0: every merge the popularity window asks for stays.
    merge_trial_steps: int = 32
    auto_hot: bool = True  # fair mode: the engine's own window picks the hot adapter; False: set_hot_adapter only
    detokenize: bool = True  # False: outputs carry token ids only, no text, no stop strings (a front-end does them)
    demo_dir: str | None = None  # where the demo assets are created; None: ~/.cache/fair_lora/demo

    def __post_init__(self, fair_weights: dict[str, float] | None) -> None:
        if fair_weights is not None:
            if self.client_weights:
                raise ValueError("give client_weights only: fair_weights is its deprecated old name")
            warnings.warn("EngineConfig(fair_weights=...) is deprecated: use client_weights", DeprecationWarning, 3)
            self.client_weights = fair_weights
        self.adapter_roots = [os.path.expanduser(root) for root in self.adapter_roots]  # YAML has no $HOME
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.load_format not in ("safetensors", "dummy"):
            raise ValueError(f"load_format must be 'safetensors' or 'dummy', got {self.load_format!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        for name in ("max_lora_rank", "max_adapter_slots", "max_num_seqs", "max_num_batched_tokens", "block_size",
                     "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.merge_trial_steps < 0:
            raise ValueError("merge_trial_steps must be >= 0")
        for name in ("max_model_len", "num_kv_blocks", "num_kv_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.num_kv_blocks is not None and self.num_kv_tokens is not None:
            raise ValueError("set num_kv_blocks or num_kv_tokens, not both")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if any(not (isinstance(w, (int, float)) and w > 0) for w in self.client_weights.values()):
            raise ValueError("client_weights must be positive numbers")
        if self.max_lora_rank > 128:
            raise ValueError("max_lora_rank must be <= 128 (one rank block of the correction kernels)")
        if self.mode == "fair" and self.max_adapter_slots < 2:
            raise ValueError("mode='fair' needs max_adapter_slots >= 2: the merged adapter pins one slot")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
