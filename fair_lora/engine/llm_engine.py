"""LLMEngine: the offline and serving entry point. step() = schedule → run → postprocess; between steps the
hot adapter may be switched (merged), never inside one."""
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Sequence as Seq
from pathlib import Path

import torch

from fair_lora.config import EngineConfig
from fair_lora.engine.block_manager import BlockManager
from fair_lora.engine.decode_graphs import MAX_BATCH, DecodeGraphs
from fair_lora.engine.launched_step import LaunchedStep
from fair_lora.engine.memory_plan import plan_memory
from fair_lora.engine.model_assets import eos_ids, load_tokenizer, resolve_assets
from fair_lora.engine.model_runner import ModelRunner, PendingTokens
from fair_lora.engine.output_processor import OutputProcessor
from fair_lora.engine.policy import make_policy
from fair_lora.engine.prompt_checks import check_prompt
from fair_lora.engine.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from fair_lora.engine.sequence import Sequence
from fair_lora.engine.step_isolation import StepIsolation
from fair_lora.engine.step_stats import StepStats, StepTotals
from fair_lora.engine.warmup import profile_forward, warm_up
from fair_lora.errors import (
    AdapterInUseError,
    AdapterNameError,
    FairLoRAError,
    QueueFullError,
    RequestError,
)
from fair_lora.hot_adapter.merge_gain import MergeGain, MergeGainConfig
from fair_lora.hot_adapter.popularity import HotAdapterPolicy, PopularityWindow
from fair_lora.hot_adapter.switch import HotSwitch
from fair_lora.layers.sampler import sample_on_device
from fair_lora.lora.adapter import LoRAAdapter, check_fits, check_name, load_adapter
from fair_lora.lora.adapter_pool import AdapterPool
from fair_lora.lora.hot_merge import HotMerger
from fair_lora.models.loader import check_kernel_shapes, load_model
from fair_lora.outputs import RequestOutput, RequestTimes
from fair_lora.sampling_params import SamplingParams

logger = logging.getLogger("fair_lora")


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_dir, adapters = resolve_assets(config)
        self.tokenizer = load_tokenizer(self.model_dir, config.load_format)
        dummy = config.load_format == "dummy"
        self.model, self.hf_config = load_model(self.model_dir, config.torch_dtype, config.device, dummy=dummy)
        limit = self.model.args.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        linears = self.model.lora_linears()
        self.shapes = {path: (m.in_features, m.out_features) for path, m in linears.items()}
        self.pool = AdapterPool(
            self.model.lora_groups(), config.max_adapter_slots, config.max_lora_rank, config.torch_dtype, config.device
        )
        parents = sorted({Path(p).resolve().parent for p in adapters.values()})
        self.adapter_roots = [Path(r) for r in config.adapter_roots] or parents
        merger = HotMerger(linears) if config.mode == "fair" else None  # its pristine copy counts before the KV cache
        self.blocks, self.scheduler, self.runner = self._build_batching(config)
        self.window = PopularityWindow(config.popularity)
        gain = MergeGain(MergeGainConfig(trial_steps=config.merge_trial_steps)) if merger is not None else None
        self.hot_switch = HotSwitch(self.pool, merger, HotAdapterPolicy(config.popularity), self.window, gain)
        self.sequences: dict[str, Sequence] = {}
        text_tokenizer = self.tokenizer if config.detokenize else None
        self.processor = OutputProcessor(text_tokenizer, eos_ids(self.hf_config, self.tokenizer), self.max_model_len)
        self._ids = itertools.count()
        self.last_step = StepStats()
        self.totals = StepTotals()  # since start-up (warm-up resets them)
        self.isolation = StepIsolation(self._forward_and_sample)
        # Overlap the host's work with the device's (launched_step.py): on by default on CUDA, where steps run
        # asynchronously; on the CPU every op is synchronous anyway, so it would only delay outputs by a step.
        self.async_scheduling = config.async_scheduling
        if self.async_scheduling is None:
            self.async_scheduling = torch.device(config.device).type == "cuda"
        self.in_flight: LaunchedStep | None = None
        for name, path in adapters.items():
            self.load_adapter(name, path)
        self.warmup_seconds = warm_up(self) if config.warmup else 0.0
        if self.warmup_seconds:
            logger.info("warm-up (kernels compiled, decode graphs captured, adapters loaded): %.1f s", self.warmup_seconds)

    def warm_up(self) -> float:
        """Compile, capture and load now (the constructor does it unless warmup=False); returns the seconds."""
        self.warmup_seconds = warm_up(self)
        return self.warmup_seconds

    def _build_batching(self, config: EngineConfig) -> tuple[BlockManager, Scheduler, ModelRunner]:
        check_kernel_shapes(self.model.args, config.device)
        profile = functools.partial(
            profile_forward, self.model, min(config.max_num_batched_tokens, self.max_model_len), config.block_size,
            config.torch_dtype, config.device, config.max_adapter_slots,
        )
        self.memory_plan = plan_memory(config, self.model.args, self.max_model_len, profile)
        logger.info(self.memory_plan.describe())
        num_blocks = self.memory_plan.num_blocks
        blocks = BlockManager(num_blocks, config.block_size)
        policy = make_policy(config.scheduling_policy, config.client_weights)
        scheduler = Scheduler(blocks, policy, self.pool, config.max_num_seqs, config.max_num_batched_tokens)
        graphs = None
        if config.cuda_graphs and torch.device(config.device).type == "cuda":
            graphs = DecodeGraphs(
                self.model, min(config.max_num_seqs, MAX_BATCH), blocks.blocks_for(self.max_model_len),
                scratch_slot=num_blocks * config.block_size, num_slots=config.max_adapter_slots, device=config.device,
            )
        runner = ModelRunner(self.model, num_blocks, config.block_size, config.torch_dtype, config.device, graphs)
        return blocks, scheduler, runner

    # ---- adapters and the hot merge -------------------------------------------------------------------

    @property
    def base_model_name(self) -> str:
        return self.model_dir.name

    def adapters(self) -> list[str]:
        return sorted(self.pool.adapters)

    def add_adapter(self, adapter: LoRAAdapter) -> None:
        """Register an adapter built in memory (benchmarks); its weights must fit the base model's shapes."""
        self._check_new_name(adapter.name)
        check_fits(adapter, self.shapes, self.config.max_lora_rank)
        self.pool.add(adapter)

    def load_adapter(self, name: str, path: str | Path) -> None:
        self._check_new_name(name)
        adapter = load_adapter(
            name, path, self.adapter_roots, self.shapes, self.config.max_lora_rank, self.config.torch_dtype
        )
        self.pool.add(adapter)

    def _check_new_name(self, name: str) -> None:
        check_name(name)
        if name == self.base_model_name:
            raise AdapterNameError(f"adapter name {name!r} is the base model's name; requests could not tell them apart")

    def requests_using(self, name: str) -> list[str]:
        """Unfinished requests (waiting, preempted or running) of adapter `name`."""
        return [seq.request_id for seq in self.sequences.values() if seq.adapter == name and not seq.finished]

    def unload_adapter(self, name: str) -> None:
        users = self.requests_using(name)
        if users:
            raise AdapterInUseError(f"adapter {name!r} is used by {len(users)} unfinished requests; unload it later")
        self.pool.remove(name)

    @property
    def hot_adapter(self) -> str | None:
        return self.hot_switch.hot

    @property
    def switches(self) -> list[tuple[str | None, float]]:
        """(new hot adapter, seconds) of every switch so far."""
        return self.hot_switch.switches

    def set_hot_adapter(self, name: str | None) -> float:
        """Merge `name` (None: restore the base weights) between steps, unjudged; returns the switch time in seconds.
        It ends any assign_hot_adapter() assignment, so the two never fight over the weights."""
        return self.hot_switch.set_by_hand(name)

    def assign_hot_adapter(self, name: str | None) -> float:
        """Keep `name` merged (None: nothing) as far as its merge pays: followed from now on and judged like an
        auto_hot merge (hot_adapter/merge_gain.py); returns the seconds of the switch made now (0.0: none)."""
        return self.hot_switch.assign(name)

    def declined_merges(self) -> list[str]:  # adapters whose merge did not pay here, not to be tried again yet
        return self.hot_switch.declined()

    # ---- requests --------------------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        adapter: str | None = None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        client: str | None = None,
    ) -> str:
        """Queue a request. `client` is who fair scheduling (vtc) counts it against; None: its adapter."""
        params = params or SamplingParams()
        if adapter is not None:
            self.pool.get(adapter)
        if len(self.scheduler.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are waiting (max_waiting); retry later")
        if not prompt:
            raise RequestError("the prompt is empty")
        if self.tokenizer is None and (isinstance(prompt, str) or params.stop):
            raise RequestError("this engine has no tokenizer: pass prompt token ids, and no stop strings")
        if params.stop and not self.config.detokenize:
            raise RequestError("this engine does not detokenize (detokenize=False): check stop strings on its outputs")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        check_prompt(ids, params, self.model.args.vocab_size, self.max_model_len, self.blocks)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.sequences:
            raise RequestError(f"request_id {request_id!r} is already in use")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.config.device).manual_seed(params.seed)
        seq = Sequence(request_id, adapter, ids, params, RequestTimes(arrival=time.monotonic()), generator, client=client)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        self.window.record(adapter)
        return request_id

    def abort(self, request_id: str) -> bool:
        seq = self.sequences.pop(request_id, None)
        if seq is None or seq.finished:
            return False
        self.scheduler.finish(seq, "abort")
        return True

    @property
    def num_preemptions(self) -> int:
        return self.totals.preemptions

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self.in_flight is not None

    # ---- the step loop ---------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """schedule → launch → resolve. With async scheduling a step launches its forward and sampling, then
        resolves the previous step's tokens while the device runs this one, so its outputs are one step late and
        the host's work overlaps the device's (launched_step.py). A failure while launching fails only the
        requests that cause it (step_isolation.py)."""
        self.hot_switch.between_steps(self.config.auto_hot)  # never inside one
        start = time.perf_counter()
        out = self.scheduler.schedule()
        launched = self._launch(out.scheduled)
        if self.async_scheduling:
            done, self.in_flight = self.in_flight, launched
        else:
            done = launched
        outputs = self._resolve(done) if done is not None else []
        self._record_step(out, time.perf_counter() - start)
        return outputs

    def _launch(self, scheduled: list[ScheduledSeq]) -> LaunchedStep | None:
        """Queue the step's forward and sampling; its sequences move on as if their tokens were known."""
        if not scheduled:
            return None
        sampling, parts, failed = [], [], []
        for part in self.isolation.run(scheduled):
            if part.error is not None:
                failed.append(self._fail(part.scheduled[0].seq, part.error))
                continue
            part_sampling = [s.seq for s in part.scheduled if s.samples_next_token]  # before num_computed moves
            for s in part.scheduled:
                s.seq.num_computed += s.num_new
            for seq in part_sampling:
                seq.num_pending += 1
            sampling += part_sampling
            parts.append((part.tokens, part.logprobs))
        return LaunchedStep.launch(sampling, parts, failed)

    def _forward_and_sample(self, scheduled: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor]:
        slots = [self.pool.slot_of[s.seq.adapter] if s.seq.adapter else -1 for s in scheduled]
        pending = None
        if self.in_flight is not None and self.in_flight.tokens is not None:
            pending = PendingTokens(self.in_flight.tokens, self.in_flight.rows)
        logits = self.runner.run(scheduled, slots, self.pool.slot_scales, self.hot_switch.slot(), pending)
        sampling = [s.seq for s in scheduled if s.samples_next_token]
        return sample_on_device(logits, [seq.params for seq in sampling], [seq.generator for seq in sampling])

    def _fail(self, seq: Sequence, error: Exception) -> RequestOutput:
        self._finish(seq, "error")
        output = self.processor.output(seq)
        output.error = f"{type(error).__name__}: {error}"
        return output

    def _resolve(self, step: LaunchedStep) -> list[RequestOutput]:
        """Read a launched step's tokens and apply them: stop checks, text, finished requests; its outputs. A
        request that finished (or was aborted) after the step was launched drops the token it had coming."""
        tokens, logprobs = step.read()
        live, live_tokens, live_logprobs = [], [], []
        for seq, token, logprob in zip(step.sampling, tokens, logprobs):
            seq.num_pending -= 1
            if not seq.finished:
                live.append(seq)
                live_tokens.append(token)
                live_logprobs.append(logprob)
        outputs = list(step.failed)
        for seq, reason in zip(live, self.processor.append_all(live, live_tokens, live_logprobs)):
            if reason is not None:
                self._finish(seq, reason)
            outputs.append(self.processor.output(seq))
        return outputs

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        seq.times.finish = time.monotonic()
        self.sequences.pop(seq.request_id, None)

    def _record_step(self, out: SchedulerOutput, seconds: float) -> None:
        corrected = sum(s.num_new for s in out.scheduled if s.seq.adapter != self.hot_adapter)
        adapters = {s.seq.adapter for s in out.scheduled}
        self.last_step = StepStats(
            len(out.scheduled), out.num_tokens, corrected, len(out.preempted), self.hot_adapter, seconds,
            len(adapters),
        )
        self.totals.add(self.last_step)
        context = sum(s.seq.num_computed for s in out.scheduled)  # launched: num_computed already counts this step
        sole = next(iter(adapters)) if len(adapters) == 1 else None
        self.hot_switch.record_step(len(out.scheduled), out.num_tokens, seconds, context, sole)

    def generate(
        self,
        prompts: Seq[str | list[int]],
        adapters: Seq[str | None] | str | None = None,
        params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run the prompts to completion; outputs in the prompts' order."""
        n = len(prompts)
        adapters = adapters if isinstance(adapters, (list, tuple)) else [adapters] * n
        params = params if isinstance(params, (list, tuple)) else [params or SamplingParams()] * n
        if not len(adapters) == len(params) == n:
            raise RequestError(f"{n} prompts but {len(adapters)} adapters and {len(params)} sampling params")
        ids: list[str] = []
        try:
            for prompt, adapter, sp in zip(prompts, adapters, params):
                ids.append(self.add_request(prompt, adapter, sp))
        except FairLoRAError:
            for request_id in ids:  # all or nothing: no half-submitted batch stays queued
                self.abort(request_id)
            raise
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            final.update((o.request_id, o) for o in self.step() if o.finished)
        return [final[i] for i in ids]

    def stats(self) -> dict:
        return {
            "hot_adapter": self.hot_adapter,
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "free_blocks": self.blocks.num_free,
            "num_blocks": self.blocks.num_blocks,
            "resident_adapters": list(self.pool.slot_of),
            "switches": len(self.switches),
            "preemptions": self.totals.preemptions,
            "step_totals": dataclasses.asdict(self.totals),
            "merge_gain": self.hot_switch.snapshot(),
        }
