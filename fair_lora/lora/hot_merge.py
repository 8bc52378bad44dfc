"""Merge one adapter into the base weights, W' = W + s·B·A, and restore W bit-exactly.

A pristine copy of every targeted weight is kept, so W' is always computed from W (never from a previous W')
and restore is a copy: no drift, whatever the number of switches. Cost: one read of W and one write of W'
per targeted projection (kernels/lora/merge.py on CUDA), plus the pristine copy's memory."""
import torch

from fair_lora.kernels.dispatch import use_triton
from fair_lora.kernels.lora.merge_ref import lora_merge_ref
from fair_lora.layers.lora_linear import LoRALinear
from fair_lora.lora.adapter import LoRAAdapter


def _triton_merge():
    from fair_lora.kernels.lora.merge import lora_merge  # imported on first use: see kernels/dispatch.py

    return lora_merge


class HotMerger:
    def __init__(self, linears: dict[str, LoRALinear]) -> None:
        self.linears = linears
        self.pristine = {path: m.weight.detach().clone() for path, m in linears.items()}
        self.merged: LoRAAdapter | None = None
        self.on_cuda = any(m.weight.is_cuda for m in linears.values())

    @torch.inference_mode()
    def merge(self, adapter: LoRAAdapter, slot: int) -> None:
        """Merge `adapter` from its device slot; projections it does not target are restored if needed."""
        previous = set(self.merged.weights) if self.merged else set()
        for path in previous - set(adapter.weights):
            self.linears[path].weight.copy_(self.pristine[path])
        for path in adapter.weights:
            linear = self.linears[path]
            r = adapter.rank
            a, b_t = linear.slots.a[slot, :r], linear.slots.b_t[slot, :r]
            merge = _triton_merge() if use_triton(a) else lora_merge_ref
            merge(linear.weight.data, self.pristine[path], b_t, a, adapter.scaling)
        self.merged = adapter

    @torch.inference_mode()
    def restore_all(self) -> None:
        """Every projection back to its pristine weights, whatever state a failed merge left them in."""
        for path, linear in self.linears.items():
            linear.weight.copy_(self.pristine[path])
        self.merged = None

    @torch.inference_mode()
    def restore(self) -> None:
        if self.merged is None:
            return
        for path in self.merged.weights:
            self.linears[path].weight.copy_(self.pristine[path])
        self.merged = None
