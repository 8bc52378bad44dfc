"""Start-up work that must never land on a request: the memory profile's forward, and the warm-up that
compiles every kernel variant and captures every decode graph before the engine reports ready.

Triton compiles a kernel per combination of its constexpr arguments and of its integer arguments' value
classes (1, a multiple of 16, anything else); the decode graphs are captured per (batch bucket, correction,
hot merged). Both happen on first use and take up to seconds each; a server would show them to its first
users. The warm-up runs the step shapes that select them: prefills of 1, 3 and 16 sequences, short and long
(the correction's 32-entry tiles start past 512 tokens), each with base and adapter tokens, with and without a
hot adapter merged; then a decode step at every graph bucket for each kind of batch.
"""
import time

import torch

from fair_lora.engine.block_manager import BlockManager
from fair_lora.engine.model_runner import ModelRunner
from fair_lora.engine.scheduler import ScheduledSeq
from fair_lora.engine.sequence import Sequence
from fair_lora.engine.step_stats import StepTotals
from fair_lora.hot_adapter.popularity import PopularityWindow
from fair_lora.outputs import RequestTimes
from fair_lora.sampling_params import SamplingParams


def profile_forward(model, max_tokens: int, block_size: int, dtype: torch.dtype, device, num_slots: int) -> None:
    """One prefill of `max_tokens` tokens, every token corrected by two adapters (own + hot subtraction):
    the largest activation footprint a step can have. Uses its own small KV cache (freed after)."""
    blocks = BlockManager(-(-max_tokens // block_size), block_size)
    runner = ModelRunner(model, blocks.num_blocks, block_size, dtype, device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(model.args.vocab_size, (max_tokens,), generator=generator).tolist()
    seq = Sequence("profile", "profile", ids, SamplingParams(max_tokens=1), RequestTimes(arrival=0.0))
    blocks.allocate(seq, max_tokens)
    scales = torch.ones(num_slots, dtype=torch.float32)
    with torch.inference_mode():
        runner.run([ScheduledSeq(seq, max_tokens)], [0], scales, 1 if num_slots > 1 else None)
    for layer in model.model.layers:  # the engine's real runner allocates the cache next
        layer.self_attn.k_cache = layer.self_attn.v_cache = None


def warm_up(engine) -> float:
    """On CUDA: load the adapters into their device slots (as many as fit), compile every kernel variant and
    capture every decode graph; returns the seconds it took. Elsewhere nothing compiles: it returns 0."""
    if torch.device(engine.config.device).type != "cuda":
        return 0.0
    start = time.perf_counter()
    run_warm_up(engine)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run_warm_up(engine) -> None:
    """The warm-up's steps, on any device. The engine's popularity window, switch history, hot adapter and
    statistics are left as they were; every request it adds is finished."""
    window, switches, hot = engine.window, list(engine.hot_switch.switches), engine.hot_adapter
    engine.window = engine.hot_switch.window = PopularityWindow(engine.config.popularity)  # not traffic
    adapters = engine.adapters()
    for name in adapters[: engine.pool.num_slots]:  # resident and unpinned: the LRU keeps them until needed
        engine.pool.acquire(name)
        engine.pool.release(name)
    merges = engine.hot_switch.merger is not None  # slora never merges: its prefills run once, unmerged
    for choice in [None, *adapters[:1]] if merges else [None]:
        if merges:
            engine.set_hot_adapter(choice)
        _prefills(engine, adapters)
    if merges:
        engine.set_hot_adapter(hot)
    graphs = engine.runner.graphs
    if graphs is not None:
        hot_slots = (None, 1) if merges else (None,)
        graphs.capture_all(engine.pool.slot_scales, hot_slots)
    engine.window = engine.hot_switch.window = window
    engine.hot_switch.switches[:] = switches
    engine.hot_switch.followed = None
    engine.totals = StepTotals()  # serving's counts start after warm-up


def _adapter_cycle(adapters: list[str], n: int) -> list[str | None]:
    names: list[str | None] = [None, *adapters]
    return [names[i % len(names)] for i in range(n)]


def _prefills(engine, adapters: list[str]) -> None:
    budget = engine.config.max_num_batched_tokens
    longest = min(budget, engine.max_model_len - 1)
    # A step as full as the budget allows, of base and adapter tokens: past 512 tokens the correction takes
    # 32-entry tiles, compiled apart with and without a hot adapter, and a short max_model_len only gets there
    # with several prompts.
    many = min(engine.config.max_num_seqs, max(3, -(-budget // longest)))
    shapes = [(1, longest), (many, budget // many), (1, 40), (3, 40), (16, 8), (16, min(40, longest // 16))]
    vocab = engine.model.args.vocab_size
    for num_seqs, length in shapes:
        prompts = [[(7 * i + j) % (vocab - 1) + 1 for j in range(length)] for i in range(num_seqs)]
        engine.generate(prompts, _adapter_cycle(adapters, num_seqs), SamplingParams(max_tokens=1, ignore_eos=True))
