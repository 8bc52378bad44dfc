"""The floor of a step on this device: max(FLOPs / matmul rate, bytes / copy bandwidth), both measured in the
same run. Bytes are what a step must move at least once: the base weights, the weights of every distinct
adapter the LoRA work touches, and the KV cache (read by a decode step, written by a prefill)."""
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    projections: dict[str, tuple[int, int]]  # target -> (H_in, H_out), the same in every layer
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: dict, dtype_bytes: int) -> "ModelShape":
        h, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
        kv = config.get("num_key_value_heads") or heads
        hd = config.get("head_dim") or h // heads
        sizes = ((h, heads * hd), (h, kv * hd), (h, kv * hd), (heads * hd, h), (h, inter), (h, inter), (inter, h))
        layers = config["num_hidden_layers"]
        return cls(config["vocab_size"], h, layers, heads, kv, hd, dict(zip(TARGETS, sizes)), dtype_bytes)

    @property
    def linear_params(self) -> int:
        """Every targeted projection of every layer, plus the LM head."""
        return self.layers * sum(i * o for i, o in self.projections.values()) + self.vocab * self.hidden

    @property
    def weight_bytes(self) -> int:
        """What one forward reads of the base model: the projections, the LM head and the norms."""
        return (self.linear_params + (2 * self.layers + 1) * self.hidden) * self.dtype_bytes

    def adapter_params(self, rank: int) -> int:
        """A rank-`rank` adapter on all seven projections of every layer (A and B)."""
        return rank * self.layers * sum(i + o for i, o in self.projections.values())

    def kv_bytes(self, tokens: int) -> int:
        return tokens * self.layers * 2 * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class Calibration:
    matmul_flops: float  # FLOP/s of a large GEMM in the benchmark's dtype
    copy_bandwidth: float  # bytes/s (read + written) of a large device-to-device copy


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def floor(self, cal: Calibration) -> tuple[float, str]:
        """(seconds, 'compute' | 'memory'): the roofline time of this work and which roof bounds it."""
        compute, memory = self.flops / cal.matmul_flops, self.bytes / cal.copy_bandwidth
        return (compute, "compute") if compute >= memory else (memory, "memory")


def correction(adapters: Sequence[int | None], hot: int | None) -> tuple[list[int], set[int]]:
    """The LoRA entries of a batch (docs/design.md, "The idea in one formula"): a token of adapter i != hot gets
    i, and also hot when one is merged; a base token gets hot when one is merged. Returns (adapter of each entry,
    distinct adapters)."""
    entries = []
    for a in adapters:
        if a is not None and a != hot:
            entries.append(a)
        if hot is not None and a != hot:
            entries.append(hot)
    return entries, set(entries)


def decode_cost(
    shape: ModelShape, adapters: Sequence[int | None], contexts: Sequence[int], hot: int | None, ranks: Sequence[int]
) -> Cost:
    """One decode step: one token per sequence; contexts: the KV length each token attends over."""
    entries, touched = correction(adapters, hot)
    attention = 4 * shape.layers * shape.heads * shape.head_dim * sum(contexts)
    lora = 2 * sum(shape.adapter_params(ranks[a]) for a in entries)
    flops = 2 * len(adapters) * shape.linear_params + attention + lora
    adapter_bytes = sum(shape.adapter_params(ranks[a]) for a in touched) * shape.dtype_bytes
    return Cost(flops, shape.weight_bytes + adapter_bytes + shape.kv_bytes(sum(contexts)))


def prefill_cost(shape: ModelShape, length: int, adapter: int | None, hot: int | None, ranks: Sequence[int]) -> Cost:
    """One prompt of `length` tokens, causal attention, logits of its last token only."""
    entries, touched = correction([adapter], hot)
    linear = 2 * length * (shape.linear_params - shape.vocab * shape.hidden) + 2 * shape.vocab * shape.hidden
    attention = 4 * shape.layers * shape.heads * shape.head_dim * length * (length + 1) // 2
    lora = 2 * length * sum(shape.adapter_params(ranks[a]) for a in entries)
    adapter_bytes = sum(shape.adapter_params(ranks[a]) for a in touched) * shape.dtype_bytes
    return Cost(linear + attention + lora, shape.weight_bytes + adapter_bytes + shape.kv_bytes(length))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(device: torch.device, dtype: torch.dtype, gemm_size: int, copy_bytes: int) -> Calibration:
    """A square GEMM of `gemm_size` and a device-to-device copy of `copy_bytes`, each timed as a median."""
    a = torch.randn(gemm_size, gemm_size, dtype=dtype, device=device)
    b = torch.randn(gemm_size, gemm_size, dtype=dtype, device=device)
    out = torch.empty(gemm_size, gemm_size, dtype=dtype, device=device)
    gemm = median_seconds(lambda: torch.mm(a, b, out=out), device, reps=10)
    del a, b, out
    src = torch.empty(copy_bytes // dtype.itemsize, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    copy = median_seconds(lambda: dst.copy_(src), device, reps=10)
    moved = 2 * src.numel() * src.element_size()
    del src, dst
    return Calibration(matmul_flops=2 * gemm_size**3 / gemm, copy_bandwidth=moved / copy)
