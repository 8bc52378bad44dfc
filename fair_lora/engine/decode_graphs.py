"""Decode steps as CUDA graph replays, so a step is one launch instead of a thousand.

A graph is captured per (padded batch size, correction entries bucket, hot merged): batch sizes are rounded up
to a bucket, the attention and correction metadata live in static buffers that each step overwrites, and
padding rows are inert (context length 0, cache writes to a scratch block, no correction entries). The
correction's grids are sized by the entry bucket, not by the batch's worst case (two entries per token): the
kernels launch a program per tile and empty programs still cost, so a step with 11 cold tokens in a batch of
128 launches grids for 32 entries, not for 256. A graph captured without correction kernels (bucket 0) only
replays for batches that have no correction entries (every token hot, or the base model with nothing merged),
so nothing is ever skipped silently. The hot slot is a device scalar the kernels read, so a hot switch needs no
new capture. `capture_all` captures every graph up front (the engine's warm-up); others are captured on first
use and kept.
"""
from dataclasses import dataclass, replace

import torch

from fair_lora.kernels.attention.metadata import AttentionMetadata
from fair_lora.kernels.lora.batch import DECODE_TILE, LoRABatch, build_lora_batch, max_tiles
from fair_lora.layers.forward_batch import ForwardBatch
from fair_lora.models.llama import LlamaForCausalLM

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
MAX_BATCH = BUCKETS[-1]
MIN_ENTRY_BUCKET = 16  # one decode tile


@dataclass(frozen=True)
class GraphKey:
    size: int  # padded batch size
    entries: int  # correction entries the grids are sized for; 0: no correction launched
    hot: bool  # the expand subtracts a merged adapter


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
        self.hot_entry_of = new(e)
        tiles = max_tiles(e, num_slots, DECODE_TILE)
        self.shrink_tiles, self.expand_tiles = new(tiles, 3), new(tiles, 3)
        self.tile_counts = new(2)  # the real tiles of each table: the kernels spread their grids over those
        self.hot_slot = new(1)
        self.logits: torch.Tensor | None = None  # [max_batch, V], written by every replay (allocated at first capture)
        self.graphs: dict[GraphKey, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def supports(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_batch

    def entry_buckets(self, size: int) -> tuple[int, ...]:
        """The correction-entry buckets of a padded batch of `size`: powers of two up to its 2·size entries."""
        buckets, e = [], MIN_ENTRY_BUCKET
        while e < 2 * size:
            buckets.append(e)
            e *= 2
        return (*buckets, max(2 * size, MIN_ENTRY_BUCKET))

    def key(self, num_seqs: int, batch: ForwardBatch) -> GraphKey:
        size = next(b for b in self.buckets if b >= num_seqs)
        if batch.lora.empty:
            return GraphKey(size, 0, False)
        entries = next(e for e in self.entry_buckets(size) if e >= batch.lora.num_entries)
        return GraphKey(size, entries, batch.lora.hot_slot is not None)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Replay the step of `batch` (decode only, one sample per sequence); returns logits [n, V]."""
        n = len(input_ids)
        key = self.key(n, batch)
        self._fill(input_ids, positions, batch, key)
        if key not in self.graphs:
            self.graphs[key] = self._capture(key, batch.lora)
        self.graphs[key].replay()
        return self.logits[:n]

    def capture_all(self, slot_scales: torch.Tensor, hot_slots: tuple[int | None, ...]) -> None:
        """Capture every graph a decode step can replay, before serving (`hot_slots`: None for no merge, and any
        slot to capture the graphs that subtract a merged adapter; its value does not matter)."""
        for size in self.buckets:
            self._capture_inert(GraphKey(size, 0, False), build_lora_batch(torch.tensor([-1]), slot_scales, None, self.device))
            for hot in hot_slots:
                lora = build_lora_batch(torch.tensor([0]), slot_scales, hot, self.device)
                for entries in self.entry_buckets(size):
                    self._capture_inert(GraphKey(size, entries, hot is not None), lora)

    def _capture_inert(self, key: GraphKey, lora: LoRABatch) -> None:
        """Capture with every row padding: no cache write outside the scratch block, no correction tile."""
        if key in self.graphs:
            return
        self.context_lens.zero_()
        self.slot_mapping.fill_(self.scratch_slot)
        self.shrink_tiles.zero_()
        self.expand_tiles.zero_()
        self.tile_counts.zero_()
        self.graphs[key] = self._capture(key, lora)

    def _fill(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, key: GraphKey) -> None:
        n, attn, lora, size = len(input_ids), batch.attn, batch.lora, key.size
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(attn.slot_mapping)
        self.slot_mapping[n:size].fill_(self.scratch_slot)
        self.context_lens[:n].copy_(attn.context_lens)
        self.context_lens[n:size].zero_()
        self.block_tables[:n, : attn.block_tables.shape[1]].copy_(attn.block_tables)
        if lora.empty:
            return
        tiles = max_tiles(key.entries, self.num_slots, DECODE_TILE)
        assert lora.tile_entries == DECODE_TILE and len(lora.shrink_tiles) <= tiles, "bucket sized wrong"
        e = lora.num_entries
        self.hot_slot.copy_(lora.hot_slot_t)
        # Entries past e are never read: only the tiles below point at entries, and their padding tiles are empty.
        self.token_idx[:e].copy_(lora.token_idx)
        self.scale[:e].copy_(lora.scale)
        self.hot_entry_of[:e].copy_(lora.hot_entry_of)
        self.shrink_tiles[: len(lora.shrink_tiles)].copy_(lora.shrink_tiles)
        self.expand_tiles[: len(lora.expand_tiles)].copy_(lora.expand_tiles)
        self.tile_counts.copy_(lora.tile_counts)  # tiles past these counts are never read

    def _static_batch(self, key: GraphKey, lora: LoRABatch) -> ForwardBatch:
        size = key.size
        attn = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            query_start=self.query_start[: size + 1],
            context_lens=self.context_lens[:size],
            block_tables=self.block_tables[:size],
            query_start_host=tuple(range(size + 1)),
            context_lens_host=(1,) * size,  # unused by the CUDA kernels; a decode-only batch
            max_query_len=1,
        )
        if key.entries:
            e, tiles = key.entries, max_tiles(key.entries, self.num_slots, DECODE_TILE)
            lora = replace(
                lora, num_tokens=size, token_idx=self.token_idx[:e], scale=self.scale[:e],
                hot_entry_of=self.hot_entry_of[:e], shrink_tiles=self.shrink_tiles[:tiles],
                expand_tiles=self.expand_tiles[:tiles], tile_counts=self.tile_counts, hot_slot_t=self.hot_slot,
            )
        else:
            lora = replace(lora, num_tokens=size)
        return ForwardBatch(attn=attn, lora=lora, logits_rows=self.logits_rows[:size])

    def _capture(self, key: GraphKey, lora: LoRABatch) -> torch.cuda.CUDAGraph:
        batch = self._static_batch(key, lora)
        ids, pos = self.input_ids[: key.size], self.positions[: key.size]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            logits = self.model(ids, pos, batch)  # warm-up: compile kernels, settle the allocator, outside the capture
            if self.logits is None:
                self.logits = torch.empty(self.max_batch, logits.shape[1], dtype=logits.dtype, device=self.device)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            # Every graph writes one shared output buffer: the model's own logits are a temporary of the pool.
            self.logits[: key.size].copy_(self.model(ids, pos, batch))
        return graph
