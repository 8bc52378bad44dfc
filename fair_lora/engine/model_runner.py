"""Turns a scheduled step into one flat forward: token ids, positions, the paged-cache metadata and the
correction metadata, then runs the model and returns the logits of the sequences that sample."""
import torch

from fair_lora.engine.decode_graphs import DecodeGraphs
from fair_lora.engine.scheduler import ScheduledSeq
from fair_lora.kernels.attention_metadata import AttentionMetadata
from fair_lora.kernels.lora_batch import build_lora_batch
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.models.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        self.graphs = graphs
        args = model.args
        # One block more than the block manager hands out: CUDA-graph padding rows write their k/v there.
        shape = (num_blocks + 1, block_size, args.num_kv_heads, args.head_dim)
        for layer in model.model.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def run(
        self, scheduled: list[ScheduledSeq], adapter_slots: list[int], slot_scales: torch.Tensor, hot_slot: int | None
    ) -> torch.Tensor:
        """adapter_slots: each scheduled sequence's pool slot (-1: base model). Returns logits [B_sample, V]."""
        input_ids, positions, batch = self.prepare(scheduled, adapter_slots, slot_scales, hot_slot)
        n = len(input_ids)
        if self.graphs and batch.attn.decode_only and len(batch.logits_rows) == n and self.graphs.supports(n):
            return self.graphs.run(input_ids, positions, batch)
        return self.model(input_ids, positions, batch)

    def prepare(
        self, scheduled: list[ScheduledSeq], adapter_slots: list[int], slot_scales: torch.Tensor, hot_slot: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
        ids, pos, slots, token_slots, query_start, context_lens, sample_rows = [], [], [], [], [0], [], []
        for s, adapter_slot in zip(scheduled, adapter_slots):
            seq, start, end = s.seq, s.seq.num_computed, s.seq.num_computed + s.num_new
            ids += seq.token_ids[start:end]
            pos += range(start, end)
            slots += [seq.block_table[p // self.block_size] * self.block_size + p % self.block_size for p in range(start, end)]
            token_slots += [adapter_slot] * s.num_new
            query_start.append(query_start[-1] + s.num_new)
            context_lens.append(end)
            if s.samples:
                sample_rows.append(query_start[-1] - 1)
        width = max(len(s.seq.block_table) for s in scheduled)
        tables = [s.seq.block_table + [-1] * (width - len(s.seq.block_table)) for s in scheduled]
        attn = AttentionMetadata(
            slot_mapping=self._tensor(slots, torch.int64),
            query_start=self._tensor(query_start, torch.int32),
            context_lens=self._tensor(context_lens, torch.int32),
            block_tables=self._tensor(tables, torch.int32),
            query_start_host=tuple(query_start),
            context_lens_host=tuple(context_lens),
            max_query_len=max(s.num_new for s in scheduled),
        )
        lora = build_lora_batch(torch.tensor(token_slots), slot_scales, hot_slot, self.device)
        batch = ForwardBatch(attn=attn, lora=lora, logits_rows=self._tensor(sample_rows, torch.int64))
        return self._tensor(ids, torch.int64), self._tensor(pos, torch.int64), batch

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)
