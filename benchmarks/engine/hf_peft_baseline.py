"""The baseline a user without fair_lora would run: transformers + peft, every adapter loaded in one PeftModel,
random weights of the benchmark's shapes made on the device, a hand-written greedy decode loop over the
model's own KV cache (no padding: every prompt has the same length).

Two ways to serve a mixed batch, chosen by `method`:
  mixed     one forward per step over the whole batch with PEFT's `adapter_names=[...]` (mixed-adapter batch
            inference: each LoRA layer loops over the distinct adapters of the batch);
  subbatch  one forward per distinct adapter per step, `set_adapter` before each (one KV cache per sub-batch).
"""
import copy
import inspect
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from benchmarks.engine.measure import ADAPTER_SCALING, adapter_name
from benchmarks.engine.roofline import TARGETS, synchronize

METHODS = {
    "mixed": "one forward per decode step over the whole batch, PEFT mixed-adapter batch (adapter_names=[...])",
    "subbatch": "one forward per distinct adapter per decode step, set_adapter before each (own KV cache each)",
}
BASE = "__base__"  # PEFT's adapter name for 'no adapter' in adapter_names


class PeftBaseline:
    def __init__(self, config_dir: Path, ranks: tuple[int, ...], device: str, dtype: torch.dtype) -> None:
        from transformers import AutoConfig

        self.device = torch.device(device)
        config = AutoConfig.from_pretrained(config_dir)
        # transformers 5 reads `dtype` (`torch_dtype` became a deprecated property); 4 reads `torch_dtype`
        renamed = isinstance(getattr(type(config), "torch_dtype", None), property)
        setattr(config, "dtype" if renamed else "torch_dtype", dtype)
        self.model = _build(config, ranks, self.device, dtype)
        base = self.model.get_base_model()
        params = inspect.signature(base.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.keep_last = {keep: 1} if keep else {}
        self.attention = getattr(base.config, "_attn_implementation", None)
        self.vocab = config.vocab_size

    @torch.inference_mode()
    def decode(
        self, adapters: list[int | None], context: int, warmup: int, steps: int, method: str, generator: torch.Generator
    ) -> tuple[list[float], list[int]]:
        """Prefill `len(adapters)` prompts of `context` tokens, then time `steps` greedy decode steps after
        `warmup` untimed ones. Returns (seconds of each timed step, KV length of each sequence in the last one)."""
        names = [BASE if a is None else adapter_name(a) for a in adapters]
        ids = torch.randint(0, self.vocab, (len(names), context), generator=generator).to(self.device)
        if method == "mixed":
            groups = {None: list(range(len(names)))}
        else:
            groups = {n: [i for i, m in enumerate(names) if m == n] for n in dict.fromkeys(names)}
        state = {g: self._forward(g, names, rows, ids[rows], None) for g, rows in groups.items()}
        seconds = []
        for step in range(warmup + steps):
            synchronize(self.device)
            start = time.perf_counter()
            state = {g: self._forward(g, names, rows, *state[g]) for g, rows in groups.items()}
            for next_ids, _ in state.values():
                next_ids.tolist()  # a serving loop reads every new token on the host, as engine.step() does
            synchronize(self.device)
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
        return seconds, [context + warmup + steps] * len(names)

    def _forward(
        self, group: str | None, names: list[str], rows: list[int], input_ids: torch.Tensor, cache: object
    ) -> tuple[torch.Tensor, object]:
        """group None: the whole batch with adapter_names; else one adapter's sub-batch. Returns (next ids, cache)."""
        kwargs = {"input_ids": input_ids, "use_cache": True, self.cache_arg: cache, **self.keep_last}
        if group is None:
            kwargs["adapter_names"] = [names[i] for i in rows]
        with self._active(group):
            out = self.model(**kwargs)
        fields = (self.cache_arg, "cache", "past_key_values")
        cache = next(getattr(out, k) for k in fields if getattr(out, k, None) is not None)
        return out.logits[:, -1:].argmax(-1), cache

    def _active(self, group: str | None) -> AbstractContextManager:
        if group == BASE:
            return self.model.disable_adapter()
        if group is not None:
            self.model.set_adapter(group)
        return nullcontext()


def _build(config, ranks: tuple[int, ...], device: torch.device, dtype: torch.dtype):
    """The base model from `config` with random weights, and one PEFT LoRA adapter per rank on all seven projections.

    PEFT's add_adapter walks every module of the model per adapter, the earlier adapters' modules included: 100
    adapters take minutes that way. So each rank's first adapter is added by PEFT and the others are cloned from
    it layer by layer: the model is the same one add_adapter would give (its forward cannot tell), only built
    in linear time. A clone copies its source's weights; a step's time does not depend on their values."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the base weights are made in the benchmark dtype, not made and cast
    try:
        with torch.device(device):
            model, first_of_rank = AutoModelForCausalLM.from_config(config), {}
            for i, rank in enumerate(ranks):
                if rank in first_of_rank:
                    continue
                lora = LoraConfig(
                    r=rank,
                    lora_alpha=int(ADAPTER_SCALING * rank),
                    target_modules=list(TARGETS),
                    lora_dropout=0.0,
                    init_lora_weights=False,  # random A and B: a real adapter's work, not a zero B
                )
                if first_of_rank:
                    model.add_adapter(adapter_name(i), lora)
                else:
                    model = get_peft_model(model, lora, adapter_name=adapter_name(i))
                first_of_rank[rank] = adapter_name(i)
            layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
            for i, rank in enumerate(ranks):
                if adapter_name(i) not in model.peft_config:
                    _clone_adapter(model, layers, first_of_rank[rank], adapter_name(i))
    finally:
        torch.set_default_dtype(default)
    # PEFT upcasts adapter weights to float32 by default; a user serving in bf16 keeps them in bf16.
    return model.to(device=device, dtype=dtype).eval()


def _clone_adapter(model, layers: list[torch.nn.Module], source: str, name: str) -> None:
    """Every per-adapter entry of every LoRA layer (modules, ranks, scalings, flags), copied from `source`."""
    model.peft_config[name] = copy.deepcopy(model.peft_config[source])
    for layer in layers:
        for entries in [*vars(layer).values(), *layer._modules.values()]:
            if isinstance(entries, (dict, torch.nn.ModuleDict, torch.nn.ParameterDict)) and source in entries:
                entry = entries[source]
                entries[name] = copy.deepcopy(entry) if isinstance(entry, (torch.nn.Module, torch.Tensor)) else entry
