"""The whole engine on its Triton kernels (all of them: fused projections' group correction, attention, KV
write, norms, rotary, SiLU, merge), run by Triton's CPU interpreter, matches transformers + peft.

The kernel tests check each kernel alone; this checks they are wired right: the fused q/k/v and gate/up
outputs, the group slots the pool fills, a merged hot adapter beside cold ones and base-model requests."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from tests.engine_helpers import assert_matches_oracle, greedy, make_engine, request_mix  # noqa: E402


def test_engine_on_triton_kernels_matches_peft_with_a_hot_adapter(demo, oracle, monkeypatch, small_grids):
    from fair_lora.kernels.lora import shrink as shrink_module

    monkeypatch.setenv("FAIR_LORA_TRITON", "1")
    groups = []
    real_shrink = shrink_module.lora_shrink
    monkeypatch.setattr(shrink_module, "lora_shrink", lambda x, slots, batch: groups.append(
        len(slots.out_sizes)) or real_shrink(x, slots, batch))
    engine = make_engine(demo, mode="fair")
    engine.set_hot_adapter("adapter-1")
    requests = request_mix(demo)
    outputs = engine.generate([p for p, _ in requests], [a for _, a in requests], greedy(4))
    assert_matches_oracle(engine, oracle, outputs, 4)
    assert set(groups) == {1, 2, 3}  # o/down alone, gate/up and q/k/v as groups, all through the kernels
