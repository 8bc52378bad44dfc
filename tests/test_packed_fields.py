"""The step's metadata tables reach the kernels 16-byte aligned whatever the batch: Triton compiles a variant
per pointer alignment, so a misaligned table would compile a kernel while serving (after the warm-up)."""
import numpy as np
import torch

from fair_lora.engine.scheduler import ScheduledSeq
from fair_lora.kernels.packed_fields import ALIGN, pack, unpack
from tests.engine_helpers import make_engine


def test_pack_round_trips_and_aligns_every_field():
    fields = [[1, 2, 3], [], [4], list(range(9)), [5, 6, 7, 8]]
    packed = pack(fields, np.int32)
    assert len(packed) % ALIGN == 0
    views = unpack(torch.from_numpy(packed), [len(f) for f in fields])
    assert [v.tolist() for v in views] == fields
    assert all(v.data_ptr() % 16 == 0 for v in views)


def test_every_table_the_kernels_read_is_aligned_for_any_batch(demo):
    engine = make_engine(demo, mode="fair")
    engine.set_hot_adapter("adapter-1")
    names = [None, *sorted(demo.adapters)]
    for num_seqs in (1, 2, 3, 5, 7):
        for length in (1, 3, 17):
            ids = [engine.add_request([5 + i] * (length + i), names[i % len(names)]) for i in range(num_seqs)]
            seqs = [engine.sequences[i] for i in ids]
            for s in seqs:
                engine.blocks.allocate(s, s.num_tokens)
            slots = [engine.pool.acquire(s.adapter) if s.adapter else -1 for s in seqs]
            _, _, batch = engine.runner.prepare([ScheduledSeq(s, s.num_tokens) for s in seqs], slots,
                                                engine.pool.slot_scales, engine.hot_switch.slot())
            tables = [batch.attn.slot_mapping, batch.attn.query_start, batch.attn.context_lens,
                      batch.attn.block_tables, batch.lora.token_idx, batch.lora.scale, batch.lora.hot_entry_of,
                      batch.lora.hot_slot_t, batch.lora.shrink_tiles, batch.lora.expand_tiles, batch.logits_rows]
            misaligned = [i for i, t in enumerate(tables) if t.numel() and t.data_ptr() % 16]
            assert misaligned == [], f"{num_seqs} seqs of {length}: tables {misaligned} misaligned"
            for s in seqs:
                if s.adapter:
                    engine.pool.release(s.adapter)
            for i in ids:
                engine.abort(i)
