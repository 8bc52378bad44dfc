"""Adapters on the host, a fixed number of device slots, LRU eviction of slots nobody is using.

Every loaded adapter keeps a host copy; a slot holds a device copy in each targeted projection's LoRASlots.
A slot is pinned while running sequences use it or while its adapter is merged, and is never evicted then."""
from collections import Counter, OrderedDict

import torch

from fair_lora.errors import AdapterInUseError, AdapterNameError, AdapterPoolFullError, UnknownAdapterError
from fair_lora.kernels.lora_slots import LoRASlots
from fair_lora.layers.fused_projection import LoRAGroup
from fair_lora.layers.lora_linear import LoRALinear
from fair_lora.lora.adapter import LoRAAdapter


class AdapterPool:
    def __init__(self, groups: list[LoRAGroup], num_slots: int, max_rank: int, dtype: torch.dtype, device) -> None:
        self.linears: dict[str, LoRALinear] = {path: m for g in groups for path, m in g.members.items()}
        self.num_slots = num_slots
        for g in groups:  # one LoRASlots per group, which its runner's correction reads; members write views
            members = list(g.members.values())
            sizes = tuple(m.out_features for m in members)
            g.runner.slots = LoRASlots.empty(num_slots, max_rank, members[0].in_features, sizes, dtype, device)
            for j, m in enumerate(members):
                m.slots = g.runner.slots if m is g.runner else g.runner.slots.sub(j)
        self.adapters: dict[str, LoRAAdapter] = {}
        self.slot_of: OrderedDict[str, int] = OrderedDict()  # resident adapters, least recently used first
        self.pins: Counter[str] = Counter()
        self.slot_scales = torch.zeros(num_slots, dtype=torch.float32)  # host: LoRABatch is built on the host

    def add(self, adapter: LoRAAdapter) -> None:
        if adapter.name in self.adapters:
            raise AdapterNameError(f"adapter {adapter.name!r} is already loaded; unload it first to replace it")
        self.adapters[adapter.name] = adapter

    def remove(self, name: str) -> None:
        self.get(name)
        if self.pins[name]:
            raise AdapterInUseError(f"adapter {name!r} is merged or used by running requests; unload it later")
        self.slot_of.pop(name, None)
        del self.adapters[name]

    def get(self, name: str) -> LoRAAdapter:
        if name not in self.adapters:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded; loaded: {sorted(self.adapters)}")
        return self.adapters[name]

    def can_acquire(self, name: str) -> bool:
        return name in self.slot_of or len(self.slot_of) < self.num_slots or self._victim() is not None

    def acquire(self, name: str) -> int:
        """Pin `name` in a device slot, loading it (and evicting the LRU unpinned adapter) if needed."""
        adapter = self.get(name)
        if name not in self.slot_of:
            self._load(adapter, self._free_slot())
        self.slot_of.move_to_end(name)
        self.pins[name] += 1
        return self.slot_of[name]

    def release(self, name: str) -> None:
        self.pins[name] -= 1
        if self.pins[name] <= 0:
            del self.pins[name]

    def _free_slot(self) -> int:
        used = set(self.slot_of.values())
        free = [s for s in range(self.num_slots) if s not in used]
        if free:
            return free[0]
        victim = self._victim()
        if victim is None:
            raise AdapterPoolFullError(f"all {self.num_slots} adapter slots are in use by running requests")
        return self.slot_of.pop(victim)

    def _victim(self) -> str | None:
        return next((n for n in self.slot_of if not self.pins[n]), None)

    def _load(self, adapter: LoRAAdapter, slot: int) -> None:
        for path, linear in self.linears.items():
            a, b = adapter.weights.get(path, (None, None))
            linear.slots.write(slot, a, b)
        self.slot_scales[slot] = adapter.scaling
        self.slot_of[adapter.name] = slot
