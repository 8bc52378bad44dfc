"""Start-up on CUDA: the KV cache sized from the device's memory, and a warm-up after which a mixed workload
(prefills of every size, decodes at every batch size, a hot switch mid-way) compiles no kernel and captures no
graph. Skipped without a GPU."""
import pytest

from benchmarks.common.compile_watch import triton_compiles
from fair_lora.demo import make_demo
from tests.engine_helpers import PROMPTS, greedy, make_engine
from tests.test_gpu_engine import GPU_SPEC

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("gpu-startup-demo"), GPU_SPEC)


def test_the_kv_cache_is_planned_from_the_device_memory(gpu_demo):
    engine = make_engine(gpu_demo, device="cuda", dtype="bfloat16", max_num_seqs=32, max_model_len=256)
    plan = engine.memory_plan
    assert plan.device_bytes > 0 and plan.resident_bytes > 0 and plan.activation_bytes > 0
    assert plan.num_blocks == 32 * (256 // 16), "capped at what max_num_seqs sequences of max_model_len can fill"
    assert engine.warmup_seconds > 0
    print(plan.describe(), f"warm-up {engine.warmup_seconds:.1f} s")


@pytest.mark.parametrize("mode", ["fair", "slora"])
def test_after_warm_up_serving_compiles_and_captures_nothing(gpu_demo, mode):
    engine = make_engine(gpu_demo, device="cuda", dtype="bfloat16", mode=mode, max_num_seqs=48)
    captured = len(engine.runner.graphs.graphs)
    names = [None, *sorted(gpu_demo.adapters)]
    requests = [(PROMPTS[i % len(PROMPTS)] * (1 + i % 5), names[i % len(names)]) for i in range(45)]
    switches = iter(["adapter-1", None, "adapter-3"] if mode == "fair" else [])
    with triton_compiles() as compiled:
        for max_tokens, batch in ((20, requests), (3, requests[:5])):
            ids = [engine.add_request(p, a, greedy(max_tokens)) for p, a in batch]
            while engine.has_unfinished():  # decode batches shrink as requests finish: every bucket size below 48
                engine.step()
                if engine.last_step.num_seqs % 7 == 0 and mode == "fair":
                    engine.set_hot_adapter(next(switches, engine.hot_adapter))
            assert all(i not in engine.sequences for i in ids)
    assert not compiled, "compiled while serving:\n" + "\n".join(compiled)
    assert len(engine.runner.graphs.graphs) == captured, "a decode graph was captured while serving"
