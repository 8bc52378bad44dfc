"""Measurements on the fair_lora engine: decode steps of a full batch, one long prefill, hot-merge switches.

A step is timed as wall time around `engine.step()` with the device synchronized on both sides: the whole
step (schedule, prepare, forward, sample), as a server sees it. Modes compared with each other are timed in
turns (`interleave`, and the prefill cases one after another in each repetition)."""
import dataclasses
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.engine.roofline import synchronize
from fair_lora import EngineConfig, LLMEngine, RequestOutput, SamplingParams
from fair_lora.lora.adapter import LoRAAdapter

ADAPTER_STD = 0.02  # small random A and B keep bf16 activations finite through every layer
ADAPTER_SCALING = 2.0  # lora_alpha = 2·r


@dataclass(frozen=True)
class EngineSettings:
    model_dir: Path  # holds config.json only: the weights are random (load_format="dummy")
    device: str
    dtype: str
    context: int  # prompt tokens of every decode sequence
    warmup: int  # decode steps run before timing (CUDA-graph capture, allocator warm-up)
    steps: int  # decode steps timed
    prefill_len: int
    prefill_reps: int
    max_batch: int
    fill_budget: int  # max_num_batched_tokens while a batch fills
    block_size: int = 16

    @property
    def fill_steps(self) -> int:
        """Steps to admit and prefill a full batch, with room for the last chunk to catch up."""
        return math.ceil(self.max_batch * self.context / self.fill_budget) + 4

    @property
    def max_tokens(self) -> int:
        """Each decode request's budget: no request finishes before its timed steps are done."""
        return self.fill_steps + self.warmup + self.steps + 2


@dataclass(frozen=True)
class DecodeTiming:
    seconds: list[float]  # each timed step
    contexts: list[int]  # the KV length each sequence attended over in the last timed step
    corrected_tokens: int | None = None  # tokens that took the correction path in the last timed step (engine's)


@dataclass(frozen=True)
class MergeTiming:
    projections: int
    merge: list[float]  # base -> adapter
    switch: list[float]  # adapter -> another adapter
    restore: list[float]  # adapter -> base
    bit_exact: bool  # after the switches every projection equals the loaded weight bit for bit
    merged_differs: bool  # a merged weight differed from the loaded one: the merge did happen


def graphs_flag_present() -> bool:
    return "cuda_graphs" in {f.name for f in dataclasses.fields(EngineConfig)}


def adapter_name(index: int) -> str:
    return f"a{index:03d}"


def make_engine(
    s: EngineSettings, mode: str, ranks: tuple[int, ...], graphs: bool | None, adapters: list[LoRAAdapter] | None = None
) -> LLMEngine:
    """An engine with random weights and one in-memory adapter per rank, every adapter fitting a device slot;
    `adapters`: another engine's, shared (they are read-only), so two engines hold one copy."""
    decode_blocks = math.ceil(s.max_batch * (s.context + s.max_tokens) / s.block_size) + s.max_batch
    prefill_blocks = math.ceil((s.prefill_len + 1) / s.block_size) + 1
    settings = dict(
        model=str(s.model_dir),
        load_format="dummy",
        device=s.device,
        dtype=s.dtype,
        mode=mode,
        auto_hot=False,
        max_adapter_slots=len(ranks),
        max_lora_rank=max(ranks),
        max_num_seqs=s.max_batch,
        max_num_batched_tokens=max(s.fill_budget, s.prefill_len),
        num_kv_blocks=max(decode_blocks, prefill_blocks),
        max_model_len=max(s.context + s.max_tokens, s.prefill_len + 1),  # the cache holds one of these at least
        block_size=s.block_size,
        warmup=False,  # the step benchmark warms up its own shapes; adapters are added after construction
    )
    if graphs is not None:
        settings["cuda_graphs"] = graphs
    engine = LLMEngine(EngineConfig(**settings))
    if adapters is None:
        add_adapters(engine, ranks)
    for adapter in adapters or ():
        engine.add_adapter(adapter)
    return engine


def engine_sets(
    s: EngineSettings, modes: list[str], ranks: tuple[int, ...], graphs: bool | None, note: Callable[[str], None]
) -> Iterator[dict[str, LLMEngine]]:
    """The engines of `modes`, all at once so their modes can be timed in turns; when the device cannot hold
    them together, one at a time (and `note` says so). Each set is freed before the next is built."""
    engines: dict[str, LLMEngine] = {}
    fits = True
    try:
        for mode in modes:
            # No local name for the first engine: this generator's frame would keep it alive after the caller
            # drops it from `engines` (the merge frees the slora engine that way).
            shared = [list(e.pool.adapters.values()) for e in engines.values()][:1]
            engines[mode] = make_engine(s, mode, ranks, graphs, shared[0] if shared else None)
    except (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.OutOfMemoryError)) as e:
        fits, error = False, type(e).__name__  # freed below, out of this block: the traceback holds the engines
    if not fits:
        engines.clear()
        free_device(torch.device(s.device))
        note(f"the {'+'.join(modes)} engines (batch up to {s.max_batch}) did not fit on the device together "
             f"({error}): their modes were timed one engine after the other, not in turns")
        for mode in modes:
            yield {mode: make_engine(s, mode, ranks, graphs)}
            free_device(torch.device(s.device))
        return
    yield engines
    engines.clear()
    free_device(torch.device(s.device))


def free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_adapters(engine: LLMEngine, ranks: tuple[int, ...]) -> None:
    """Random adapters on all seven projections of every layer, drawn on the engine's device and kept on the
    host, as loaded adapters are (the pool copies each into a device slot once): 7.4 GiB less on the device
    for 100 rank-16 adapters of Llama-2-7B, so two engines fit beside each other on one H200."""
    device, dtype = torch.device(engine.config.device), engine.config.torch_dtype
    generator = torch.Generator(device=device).manual_seed(1)
    shapes = list(engine.shapes.items())
    for i, rank in enumerate(ranks):
        sizes = [n for _, (h_in, h_out) in shapes for n in (rank * h_in, h_out * rank)]
        flat = torch.randn(sum(sizes), generator=generator, dtype=dtype, device=device).mul_(ADAPTER_STD).cpu()
        parts = iter(flat.split(sizes))  # one device-to-host copy per adapter, not one per tensor
        weights = {path: (next(parts).view(rank, h_in), next(parts).view(h_out, rank)) for path, (h_in, h_out) in
                   shapes}
        engine.add_adapter(LoRAAdapter(adapter_name(i), Path("."), rank, ADAPTER_SCALING, weights))


class DecodeRun:
    """One engine's full decode batch: admitted and prefilled on creation, then timed a few steps at a time, so
    that the batches of two engines (each holds its own requests and KV cache) can be timed in turns: a ratio
    of two modes then compares steps taken seconds apart, not a minute apart on a shared, drifting GPU.

    adapters: each sequence's adapter name (None: the base model); hot: the adapter merged (fair mode)."""

    def __init__(
        self, engine: LLMEngine, s: EngineSettings, adapters: list[str | None], hot: str | None,
        rng: np.random.Generator,
    ) -> None:
        self.engine, self.batch = engine, len(adapters)
        self.device = torch.device(engine.config.device)
        if engine.config.mode == "fair":
            engine.set_hot_adapter(hot)
        params = SamplingParams(max_tokens=s.max_tokens, ignore_eos=True)
        prompts = rng.integers(0, engine.hf_config.vocab_size, (self.batch, s.context)).tolist()
        self.ids = [engine.add_request(p, a, params) for p, a in zip(prompts, adapters)]
        self.seconds: list[float] = []
        self.outputs: list[RequestOutput] = []
        try:
            _fill(engine, self.batch, s.fill_steps)
        except BaseException:
            self.close()
            raise

    def step(self, timed: bool) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        self.outputs = _decode_step(self.engine, self.batch)
        synchronize(self.device)
        if timed:
            self.seconds.append(time.perf_counter() - start)

    def timing(self) -> DecodeTiming:
        contexts = [len(o.prompt_token_ids) + len(o.token_ids) - 1 for o in self.outputs]
        return DecodeTiming(self.seconds, contexts, self.engine.last_step.num_corrected_tokens)

    def close(self) -> None:
        for request_id in self.ids:
            self.engine.abort(request_id)
        self.ids = []


def interleave(runs: list[DecodeRun], warmup: int, steps: int, turn: int) -> list[DecodeTiming]:
    """Warm every run up, then time `steps` decode steps of each, `turn` steps at a time, the runs in turns
    (their engines must differ: one engine steps all its requests at once)."""
    assert len({id(r.engine) for r in runs}) == len(runs), "interleaved runs need one engine each"
    for _ in range(warmup):
        for run in runs:
            run.step(timed=False)
    while any(len(run.seconds) < steps for run in runs):
        for run in runs:
            for _ in range(min(turn, steps - len(run.seconds))):
                run.step(timed=True)
    return [run.timing() for run in runs]


def _fill(engine: LLMEngine, batch: int, limit: int) -> None:
    """Step until every sequence is admitted and prefilled: the first step that decodes all of them."""
    for _ in range(limit):
        engine.step()
        if engine.last_step.num_seqs == batch and engine.last_step.num_tokens == batch:
            return
    raise RuntimeError(f"a batch of {batch} did not reach pure decode in {limit} steps (KV blocks or slots short?)")


def _decode_step(engine: LLMEngine, batch: int) -> list[RequestOutput]:
    outputs = engine.step()
    if engine.last_step.num_tokens != batch or len(outputs) != batch:
        raise RuntimeError(
            f"a decode step ran {engine.last_step.num_tokens} tokens for {len(outputs)} sequences, expected {batch}"
            f" (preempted: {engine.last_step.num_preempted})"
        )
    return outputs


def prefill_step(engine: LLMEngine, s: EngineSettings, adapter: str | None, rng: np.random.Generator) -> float:
    """Seconds of the step that prefills one `prefill_len`-token prompt (fair: with the hot adapter already set)."""
    device = torch.device(engine.config.device)
    prompt = rng.integers(0, engine.hf_config.vocab_size, s.prefill_len).tolist()
    request_id = engine.add_request(prompt, adapter, SamplingParams(max_tokens=1, ignore_eos=True))
    try:
        synchronize(device)
        start = time.perf_counter()
        engine.step()
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        engine.abort(request_id)
    if engine.last_step.num_tokens != s.prefill_len:
        raise RuntimeError(f"the prefill step ran {engine.last_step.num_tokens} tokens, not {s.prefill_len}")
    return seconds


def measure_merge(engine: LLMEngine, names: list[str], rounds: int) -> MergeTiming:
    """Switch base -> names[0] -> names[1] -> ... -> base `rounds` times, after one untimed pass that makes every
    adapter slot-resident (so a switch is a merge, not a host load); then compare every weight with the loaded one."""
    linears = engine.model.lora_linears()
    engine.set_hot_adapter(None)
    loaded = {path: m.weight.detach().clone() for path, m in linears.items()}
    for name in names:
        engine.set_hot_adapter(name)
    engine.set_hot_adapter(None)
    merge, switch, restore, differs = [], [], [], False
    probe = next(iter(linears))
    for _ in range(rounds):
        merge.append(engine.set_hot_adapter(names[0]))
        differs = differs or not _bit_equal(linears[probe].weight, loaded[probe])
        switch += [engine.set_hot_adapter(name) for name in names[1:]]
        restore.append(engine.set_hot_adapter(None))
    exact = all(_bit_equal(m.weight, loaded[path]) for path, m in linears.items())
    return MergeTiming(len(linears), merge, switch, restore, exact, differs)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.detach().view(as_int), b.view(as_int))
