"""Turns a scheduled step into one flat forward: token ids, positions, the paged-cache metadata and the
correction metadata, then runs the model and returns the logits of the sequences that sample."""
from dataclasses import dataclass

import numpy as np
import torch

from fair_lora.engine.decode_graphs import DecodeGraphs
from fair_lora.engine.host_upload import HostUpload
from fair_lora.engine.scheduler import ScheduledSeq
from fair_lora.engine.sequence import Sequence
from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.lora.batch import lora_batch_on_device, lora_tables
from fair_lora.kernels.packed_fields import pack, unpack
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.models.llama import LlamaForCausalLM


@dataclass(frozen=True)
class PendingTokens:
    """The last launched step's sampled tokens, still on the device, and which row each sequence drew."""
    tokens: torch.Tensor  # [N] int64 on the runner's device
    rows: dict[Sequence, int]


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, num_blocks: int, block_size: int, dtype: torch.dtype, device,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model, self.block_size, self.device = model, block_size, torch.device(device)
        self.graphs = graphs
        self.upload = HostUpload(self.device)
        args = model.args
        # One block more than the block manager hands out: CUDA-graph padding rows write their k/v there.
        shape = (num_blocks + 1, block_size, args.num_kv_heads, args.head_dim)
        for layer in model.model.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def run(
        self, scheduled: list[ScheduledSeq], adapter_slots: list[int], slot_scales: torch.Tensor, hot_slot: int | None,
        pending: PendingTokens | None = None,
    ) -> torch.Tensor:
        """adapter_slots: each scheduled sequence's pool slot (-1: base model). Returns logits [B_sample, V]."""
        input_ids, positions, batch = self.prepare(scheduled, adapter_slots, slot_scales, hot_slot, pending)
        n = len(input_ids)
        if self.graphs and batch.attn.decode_only and len(batch.logits_rows) == n and self.graphs.supports(n):
            return self.graphs.run(input_ids, positions, batch)
        return self.model(input_ids, positions, batch)

    def prepare(
        self, scheduled: list[ScheduledSeq], adapter_slots: list[int], slot_scales: torch.Tensor, hot_slot: int | None,
        pending: PendingTokens | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
        ids, pos, slots, token_slots, query_start, context_lens, sample_rows = [], [], [], [], [0], [], []
        from_device, device_rows = [], []  # input positions whose token the previous step sampled, and its row
        for s, adapter_slot in zip(scheduled, adapter_slots):
            seq, start, end = s.seq, s.seq.num_computed, s.seq.num_computed + s.num_new
            ids += seq.token_ids[start:end]
            if end > len(seq.token_ids):  # its last input is the previous step's pending sample
                assert pending is not None and end == len(seq.token_ids) + 1, "a pending token nobody sampled"
                from_device.append(len(ids))
                device_rows.append(pending.rows[seq])
                ids.append(0)
            pos += range(start, end)
            table, size = seq.block_table, self.block_size
            slots += [table[p // size] * size + p % size for p in range(start, end)]
            token_slots += [adapter_slot] * s.num_new
            query_start.append(query_start[-1] + s.num_new)
            context_lens.append(end)
            if s.samples_next_token:
                sample_rows.append(query_start[-1] - 1)
        width = max(len(s.seq.block_table) for s in scheduled)
        tables = [s.seq.block_table + [-1] * (width - len(s.seq.block_table)) for s in scheduled]
        lora = lora_tables(np.array(token_slots, dtype=np.int64), slot_scales.numpy(), hot_slot)
        # One int64 array, one copy: the int64 fields first, then the int32 ones (scales as their float32 bits),
        # every field starting 16-byte aligned (see packed_fields.py).
        int64_fields = [ids, pos, slots, sample_rows, lora.token_idx, from_device, device_rows]
        int32_fields = [query_start, context_lens, np.array(tables).reshape(-1), lora.packed_int32(),
                        lora.scale.view(np.int32)]
        int64_part = pack(int64_fields)
        device = self.upload(np.concatenate([int64_part, pack(int32_fields)]))
        ids_t, pos_t, slot_mapping, logits_rows, token_idx, from_device_t, device_rows_t = unpack(
            device, [len(a) for a in int64_fields])
        if from_device:
            ids_t[from_device_t] = pending.tokens[device_rows_t]  # on the device: the host never waits for them
        query_start_t, context_lens_t, tables_t, lora_int32, scale = unpack(
            device[len(int64_part) :].int(), [len(a) for a in int32_fields])
        attn = AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start=query_start_t,
            context_lens=context_lens_t,
            block_tables=tables_t.view(len(scheduled), width),
            query_start_host=tuple(query_start),
            context_lens_host=tuple(context_lens),
            max_query_len=max(s.num_new for s in scheduled),
        )
        batch = ForwardBatch(
            attn=attn,
            lora=lora_batch_on_device(lora, token_idx, scale.view(torch.float32), lora_int32),
            logits_rows=logits_rows,
        )
        return ids_t, pos_t, batch
