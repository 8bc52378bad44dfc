"""Decode steps as CUDA graph replays, so a step is one launch instead of a thousand.

A graph is captured per (padded batch size, correction kind): batch sizes are rounded up to a bucket, the
attention and correction metadata live in static buffers that each step overwrites, and padding rows are
inert (context length 0, cache writes to a scratch block, no correction entries). The correction kind is
part of the key so nothing is ever skipped silently: a graph captured without correction kernels only
replays for batches that have no correction entries (every token hot, or the base model with nothing
merged); a batch with entries replays a graph that launches them. The hot slot is a device scalar the
kernels read, so a hot switch needs no new capture. Graphs are captured on first use and kept.
"""
from dataclasses import dataclass, replace

import torch

from fair_lora.kernels.attention_metadata import AttentionMetadata
from fair_lora.kernels.lora_batch import DECODE_TILE, LoRABatch, max_tiles
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.models.llama import LlamaForCausalLM

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
MAX_BATCH = BUCKETS[-1]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [B, V], written by every replay


class DecodeGraphs:
    def __init__(
        self, model: LlamaForCausalLM, max_batch: int, max_blocks: int, scratch_slot: int, num_slots: int, device
    ) -> None:
        self.model, self.device = model, torch.device(device)
        self.buckets = tuple(b for b in BUCKETS if b < max_batch) + (max_batch,)
        self.max_batch, self.max_blocks, self.scratch_slot = max_batch, max_blocks, scratch_slot
        b, e = max_batch, 2 * max_batch  # a token has at most two entries: its own adapter and the hot one
        self.num_slots = num_slots

        def new(*shape: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.input_ids, self.positions = new(b, dtype=torch.int64), new(b, dtype=torch.int64)
        self.slot_mapping = new(b, dtype=torch.int64)
        self.context_lens, self.block_tables = new(b), new(b, max_blocks)
        self.query_start = torch.arange(b + 1, dtype=torch.int32, device=device)
        self.logits_rows = torch.arange(b, dtype=torch.int64, device=device)
        self.token_idx, self.scale = new(e, dtype=torch.int64), new(e, dtype=torch.float32)
        self.pair = new(e)
        tiles = max_tiles(e, num_slots, DECODE_TILE)
        self.shrink_tiles, self.expand_tiles = new(tiles, 3), new(tiles, 3)
        self.hot_slot = new(1)
        self.graphs: dict[tuple[int, bool, bool], _Graph] = {}  # (batch size, corrected, hot merged)
        self.pool = torch.cuda.graph_pool_handle()

    def supports(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_batch

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Replay the step of `batch` (decode only, one sample per sequence); returns logits [n, V]."""
        n = len(input_ids)
        size = next(b for b in self.buckets if b >= n)
        corrected = not batch.lora.empty
        self._fill(input_ids, positions, batch, size)
        key = (size, corrected, corrected and batch.lora.hot_slot is not None)
        if key not in self.graphs:
            self.graphs[key] = self._capture(size, corrected, batch.lora)
        entry = self.graphs[key]
        entry.graph.replay()
        return entry.logits[:n]

    def _fill(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, size: int) -> None:
        n, attn, lora = len(input_ids), batch.attn, batch.lora
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(attn.slot_mapping)
        self.slot_mapping[n:size].fill_(self.scratch_slot)
        self.context_lens[:n].copy_(attn.context_lens)
        self.context_lens[n:size].zero_()
        self.block_tables[:n, : attn.block_tables.shape[1]].copy_(attn.block_tables)
        if lora.empty:
            return
        tiles = max_tiles(2 * size, self.num_slots, DECODE_TILE)
        assert lora.tile_entries == DECODE_TILE and len(lora.shrink_tiles) <= tiles, "bucket sized wrong"
        e = lora.num_entries
        self.hot_slot.copy_(lora.hot_slot_t)
        for static, real, pad in (
            (self.token_idx, lora.token_idx, 0), (self.scale, lora.scale, 0),
            (self.pair, lora.pair, -1),
        ):
            static[:e].copy_(real)
            static[e:].fill_(pad)
        for static, real in ((self.shrink_tiles, lora.shrink_tiles), (self.expand_tiles, lora.expand_tiles)):
            static[: len(real)].copy_(real)
            static[len(real) : tiles].zero_()  # (first 0, end 0): a tile with no entries

    def _static_batch(self, size: int, corrected: bool, lora: LoRABatch) -> ForwardBatch:
        attn = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            query_start=self.query_start[: size + 1],
            context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size],
            query_start_host=tuple(range(size + 1)),
            context_lens_host=(1,) * size,  # unused by the CUDA kernels; a decode-only batch
            max_query_len=1,
        )
        if corrected:
            # The grids are sized by the bucket's worst case, not the largest bucket's: the kernels launch a
            # program per tile, and the empty ones still cost their scheduling.
            e = 2 * size
            tiles = max_tiles(e, self.num_slots, DECODE_TILE)
            lora = replace(
                lora, num_tokens=size, token_idx=self.token_idx[:e], scale=self.scale[:e], pair=self.pair[:e],
                shrink_tiles=self.shrink_tiles[:tiles], expand_tiles=self.expand_tiles[:tiles],
                hot_slot_t=self.hot_slot,
            )
        else:
            lora = replace(lora, num_tokens=size)
        return ForwardBatch(attn=attn, lora=lora, logits_rows=self.logits_rows[:size])

    def _capture(self, size: int, corrected: bool, lora: LoRABatch) -> _Graph:
        batch = self._static_batch(size, corrected, lora)
        ids, pos = self.input_ids[:size], self.positions[:size]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.model(ids, pos, batch)  # warm-up: compile kernels, settle the allocator, outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.model(ids, pos, batch)
        return _Graph(graph, logits)
