"""How many KV-cache blocks the engine gets, and the plan it logs at start.

On CUDA the cache takes what is left of `gpu_memory_utilization` of the device once the weights, the adapter
slots, the hot merge's pristine copy and the peak of a full-size forward are accounted for (vLLM's way: the
forward is profiled, not estimated), but no more than max_num_seqs sequences of max_model_len can fill. A plan that
leaves no room for one sequence of max_model_len is refused with the knob to turn. When num_kv_blocks / num_kv_tokens
is set, the size is what was asked. On the CPU it is max_num_seqs sequences of max_model_len, but no more than a share
of the host's available memory: a real model's 8192-token context times 64 sequences would otherwise zero-fill
more than the machine has."""
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fair_lora.config import EngineConfig
from fair_lora.errors import FairLoRAError
from fair_lora.models.llama import ModelArgs

logger = logging.getLogger("fair_lora")
GIB = 1 << 30
GRAPH_RESERVE_BYTES = 1 << 30  # decode graphs' private memory pool, captured after the cache is allocated
# Of the host memory available when a CPU engine starts: workers starting together each see the same amount, and the
# weights, adapters and activations need the rest.
CPU_KV_SHARE = 0.25


class MemoryPlanError(FairLoRAError):
    """The configuration cannot fit the device; the message names the setting to change."""


@dataclass(frozen=True)
class MemoryPlan:
    num_blocks: int
    block_size: int
    block_bytes: int
    max_model_len: int
    device_bytes: int = 0  # 0: sized by the settings, not from the device's memory
    resident_bytes: int = 0  # weights, adapter slots, pristine copy (and anything else already allocated)
    activation_bytes: int = 0  # peak of the profiled forward beyond the resident bytes
    host_available_bytes: int = 0  # CPU: the host's available memory, when it capped the cache (0: it did not)

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_full_length_seqs(self) -> int:
        return self.kv_tokens // self.max_model_len

    def describe(self) -> str:
        kv = f"KV cache {self.num_blocks * self.block_bytes / GIB:.2f} GiB = {self.kv_tokens} tokens"
        seqs = f"{self.max_full_length_seqs} sequences of max_model_len {self.max_model_len} at once"
        if self.host_available_bytes:
            share = f"{CPU_KV_SHARE:.0%} of the host's {self.host_available_bytes / GIB:.1f} GiB available"
            return f"memory plan: {kv} (capped at {share}; lower max_model_len or max_num_seqs to fit), {seqs}"
        if not self.device_bytes:
            return f"memory plan: {kv} (as configured), {seqs}"
        return (
            f"memory plan: device {self.device_bytes / GIB:.1f} GiB; weights + adapter slots + pristine copy "
            f"{self.resident_bytes / GIB:.2f} GiB; activation peak {self.activation_bytes / GIB:.2f} GiB; "
            f"graph pool reserve {GRAPH_RESERVE_BYTES / GIB:.2f} GiB; {kv}; {seqs}"
        )


def kv_block_bytes(args: ModelArgs, block_size: int, dtype: torch.dtype) -> int:
    """Keys and values of one block in every layer."""
    return 2 * args.num_layers * block_size * args.num_kv_heads * args.head_dim * dtype.itemsize


def plan_memory(
    config: EngineConfig, args: ModelArgs, max_model_len: int, profile_forward: Callable[[], None]
) -> MemoryPlan:
    """profile_forward: runs the largest forward the engine will run (called only when the plan measures)."""
    block_bytes = kv_block_bytes(args, config.block_size, config.torch_dtype)
    plan = MemoryPlan(0, config.block_size, block_bytes, max_model_len)
    blocks_per_seq = -(-max_model_len // config.block_size)
    if config.num_kv_blocks is not None or config.num_kv_tokens is not None:
        num_blocks = config.num_kv_blocks or -(-config.num_kv_tokens // config.block_size)
    elif torch.device(config.device).type != "cuda":
        return _host_sized(config, plan, blocks_per_seq)
    else:
        return _measured(config, plan, blocks_per_seq, profile_forward)
    if num_blocks < blocks_per_seq:
        raise MemoryPlanError(
            f"the KV cache ({num_blocks * config.block_size} tokens) cannot hold one sequence of max_model_len "
            f"{max_model_len}: raise num_kv_blocks / num_kv_tokens or lower max_model_len"
        )
    return MemoryPlan(num_blocks, config.block_size, block_bytes, max_model_len)


def _host_sized(config: EngineConfig, plan: MemoryPlan, blocks_per_seq: int) -> MemoryPlan:
    import psutil  # here: the GPU machines' environments may lack it, and they never plan this way

    wanted = config.max_num_seqs * blocks_per_seq
    available = psutil.virtual_memory().available
    fits = int(available * CPU_KV_SHARE) // plan.block_bytes
    if wanted <= fits:
        return MemoryPlan(wanted, plan.block_size, plan.block_bytes, plan.max_model_len)
    capped = MemoryPlan(fits, plan.block_size, plan.block_bytes, plan.max_model_len, host_available_bytes=available)
    if fits < blocks_per_seq:
        raise MemoryPlanError(
            f"{capped.describe()}: no room for one sequence of max_model_len {plan.max_model_len}; lower "
            "max_model_len, or free host memory"
        )
    return capped


def _measured(config: EngineConfig, plan: MemoryPlan, blocks_per_seq: int, profile_forward) -> MemoryPlan:
    device = torch.device(config.device)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    used_before = total - free  # ours and any other process's: the budget is of the whole device
    torch.cuda.reset_peak_memory_stats(device)
    allocated = torch.cuda.memory_allocated(device)
    profile_forward()
    torch.cuda.synchronize(device)
    activation = torch.cuda.max_memory_allocated(device) - allocated
    torch.cuda.empty_cache()
    budget = int(total * config.gpu_memory_utilization) - used_before - activation - GRAPH_RESERVE_BYTES
    # No more than the scheduler can ever fill: max_num_seqs sequences of max_model_len.
    num_blocks = min(max(budget, 0) // plan.block_bytes, config.max_num_seqs * blocks_per_seq)
    measured = MemoryPlan(num_blocks, plan.block_size, plan.block_bytes, plan.max_model_len, total, used_before, activation)
    if num_blocks < blocks_per_seq:
        raise MemoryPlanError(
            f"{measured.describe()}: no room for one sequence of max_model_len {plan.max_model_len}; raise "
            f"gpu_memory_utilization, or lower max_model_len, max_num_batched_tokens or max_adapter_slots"
        )
    return measured
