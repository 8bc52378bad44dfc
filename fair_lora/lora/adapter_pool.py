"""Adapters on the host, a fixed number of device slots, LRU eviction of slots nobody is using.

Every loaded adapter keeps a host copy; a slot holds a device copy in each targeted projection's LoRASlots.
A slot is pinned while running sequences use it or while its adapter is merged, and is never evicted then.

On CUDA the host copies are page-locked and a slot loads as asynchronous copies on a side stream, so the host
does not wait for them: `prefetch` starts a load and says whether the slot is ready (its event completed); a
scheduler admits a sequence once it is, and `acquire` of a slot still loading makes the current stream wait for
it. A slot being loaded is never evicted. On the CPU a load is synchronous."""
import heapq
from collections import Counter, OrderedDict

import torch

from fair_lora.errors import AdapterInUseError, AdapterNameError, AdapterPoolFullError, UnknownAdapterError
from fair_lora.kernels.lora.slots import LoRASlots
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
        self.free_slots = list(range(num_slots))  # a heap: the lowest free slot is taken first
        self.device = torch.device(device)
        self.loading: dict[str, torch.cuda.Event] = {}  # CUDA: adapters whose slot copies are in flight
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def add(self, adapter: LoRAAdapter) -> None:
        if adapter.name in self.adapters:
            raise AdapterNameError(f"adapter {adapter.name!r} is already loaded; unload it first to replace it")
        if self._stream is not None:
            _pin(adapter)
        self.adapters[adapter.name] = adapter

    def remove(self, name: str) -> None:
        self.get(name)
        if self.pins[name]:
            raise AdapterInUseError(f"adapter {name!r} is merged or used by running requests; unload it later")
        if name in self.slot_of:
            self.loading.pop(name, None)  # the slot's next load is queued behind this one on the same stream
            heapq.heappush(self.free_slots, self.slot_of.pop(name))
        del self.adapters[name]

    def get(self, name: str) -> LoRAAdapter:
        if name not in self.adapters:
            raise UnknownAdapterError(f"adapter {name!r} is not loaded; loaded: {sorted(self.adapters)}")
        return self.adapters[name]

    def can_acquire(self, name: str) -> bool:
        return name in self.slot_of or bool(self.free_slots) or self._victim() is not None

    def prefetch(self, name: str) -> bool:
        """Make `name` resident without pinning it: start its load if it has no slot (evicting the least recently
        used adapter that is neither pinned nor loading). True once its slot is ready for a forward; False while
        its copies are in flight or when no slot can take it now: ask again on a later step."""
        adapter = self.get(name)
        if name not in self.slot_of:
            slot = self._claim_slot()
            if slot is None:
                return False
            self._load(adapter, slot)
        self.slot_of.move_to_end(name)
        return self._ready(name)

    def acquire(self, name: str) -> int:
        """Pin `name` in a device slot, loading it (and evicting the LRU unpinned adapter) if needed. If its copies
        are still in flight, the current stream waits for them, so whatever it runs next reads the loaded slot."""
        adapter = self.get(name)
        if name not in self.slot_of:
            slot = self._claim_slot()
            if slot is None:
                raise AdapterPoolFullError(f"all {self.num_slots} adapter slots are in use by running requests")
            self._load(adapter, slot)
        event = self.loading.pop(name, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        self.slot_of.move_to_end(name)
        self.pins[name] += 1
        return self.slot_of[name]

    def release(self, name: str) -> None:
        self.pins[name] -= 1
        if self.pins[name] <= 0:
            del self.pins[name]

    def _ready(self, name: str) -> bool:
        event = self.loading.get(name)
        if event is None:
            return True
        if not event.query():
            return False
        del self.loading[name]
        return True

    def _claim_slot(self) -> int | None:
        if self.free_slots:
            return heapq.heappop(self.free_slots)
        victim = self._victim()
        return None if victim is None else self.slot_of.pop(victim)

    def _victim(self) -> str | None:
        return next((n for n in self.slot_of if not self.pins[n] and self._ready(n)), None)

    def _load(self, adapter: LoRAAdapter, slot: int) -> None:
        if self._stream is None:
            self._write(adapter, slot, non_blocking=False)
        else:
            # Forwards already queued may still read the slot's previous adapter: the copies go in after them.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                self._write(adapter, slot, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            self.loading[adapter.name] = event
        self.slot_scales[slot] = adapter.scaling
        self.slot_of[adapter.name] = slot

    def _write(self, adapter: LoRAAdapter, slot: int, non_blocking: bool) -> None:
        for path, linear in self.linears.items():
            a, b = adapter.weights.get(path, (None, None))
            linear.slots.write(slot, a, b, non_blocking)


def _pin(adapter: LoRAAdapter) -> None:
    """Page-locked host copies, so that a slot load is an asynchronous copy. B [H_out, r] is kept as a view of a
    contiguous Bᵀ, the layout a slot stores, so its copy needs no host-side transpose either. Already pinned
    tensors (an adapter shared by two engines) are kept as they are."""
    weights = {}
    for path, (a, b) in adapter.weights.items():
        if not (a.is_contiguous() and a.is_pinned()):
            a = a.contiguous().pin_memory()
        if not (b.t().is_contiguous() and b.is_pinned()):
            b = b.t().contiguous().pin_memory().t()
        weights[path] = (a, b)
    adapter.weights = weights
