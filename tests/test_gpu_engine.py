"""The engine on CUDA (Triton kernels, CUDA-graph decode) against transformers + peft. Skipped without a GPU."""
import pytest
import torch

from fair_lora.demo import DemoSpec, make_demo
from tests.engine_helpers import PROMPTS, assert_matches_oracle, greedy, make_engine, request_mix
from tests.hf_oracle import HFOracle

pytestmark = pytest.mark.gpu
GPU_SPEC = DemoSpec(seed=11, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=2, num_adapters=6, use_rslora_every=3)


@pytest.fixture(scope="module")
def gpu_demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("gpu-demo"), GPU_SPEC)


def run(engine, requests, max_tokens, switches=()):
    ids = [engine.add_request(p, a, greedy(max_tokens)) for p, a in requests]
    final, plan = {}, iter(switches)
    while engine.has_unfinished():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
        engine.set_hot_adapter(next(plan, engine.hot_adapter))
    return [final[i] for i in ids]


def test_float32_on_gpu_matches_peft_exactly_with_graphs_and_switches(gpu_demo):
    oracle = HFOracle(gpu_demo.model_dir, gpu_demo.adapters)
    engine = make_engine(gpu_demo, device="cuda", dtype="float32")
    outputs = run(engine, request_mix(gpu_demo, repeat=3), 12, ["adapter-2", "adapter-0", None, "adapter-4"])
    assert engine.runner.graphs.graphs, "decode steps went through CUDA graphs"
    assert_matches_oracle(engine, oracle, outputs, 12)


def test_cuda_graphs_give_the_same_tokens_as_eager(gpu_demo):
    requests = request_mix(gpu_demo, repeat=4)
    outs = {}
    for graphs in (False, True):
        engine = make_engine(gpu_demo, device="cuda", dtype="float32", cuda_graphs=graphs)
        engine.set_hot_adapter("adapter-3")
        outs[graphs] = run(engine, requests, 16)
    for eager, graphed in zip(outs[False], outs[True]):
        assert eager.token_ids == graphed.token_ids
        assert max(abs(a - b) for a, b in zip(eager.logprobs, graphed.logprobs)) < 1e-4


def _teacher_forced_logits(model, outputs, dtype):
    """transformers + peft logits at every generated position, fed the engine's own tokens."""
    rows = []
    for out in outputs:
        ids = torch.tensor([out.prompt_token_ids + out.token_ids], device="cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            if out.adapter is None:
                with model.disable_adapter():
                    logits = model(ids).logits[0].float()
            else:
                model.set_adapter(out.adapter)
                logits = model(ids).logits[0].float()
        n = len(out.prompt_token_ids)
        rows.append(logits[n - 1 : n - 1 + len(out.token_ids)])
    return torch.cat(rows)


def _peft_model(demo, dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo.model_dir).to(device="cuda", dtype=dtype).eval()
    names = list(demo.adapters)
    model = PeftModel.from_pretrained(base, demo.adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(demo.adapters[name], adapter_name=name)
    return model


def test_bf16_engine_agrees_with_peft(gpu_demo):
    """Raw agreement with peft in bf16 is bounded by bf16 noise on a random model's near-ties (peft bf16 vs
    peft fp32 agree on only ~92-95% of positions here); so the assertion is on the positions where the float32
    oracle's top-2 margin exceeds bf16 noise, and the raw rates are printed for the report."""
    engine = make_engine(gpu_demo, device="cuda", dtype="bfloat16")
    engine.set_hot_adapter("adapter-0")
    requests = list(request_mix(gpu_demo, repeat=4)) + [(PROMPTS[0], "adapter-0")] * 6
    outputs = run(engine, requests, 24)
    tokens = torch.tensor([t for out in outputs for t in out.token_ids], device="cuda")
    fp32 = _teacher_forced_logits(_peft_model(gpu_demo, torch.float32), outputs, torch.float32)
    bf16 = _teacher_forced_logits(_peft_model(gpu_demo, torch.bfloat16), outputs, torch.bfloat16)
    top2 = fp32.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 0.25
    engine_vs_bf16 = (bf16.argmax(-1) == tokens).float().mean().item()
    bf16_vs_fp32 = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()
    decisive_rate = (fp32.argmax(-1) == tokens)[decisive].float().mean().item()
    print(f"engine-bf16 vs peft-bf16 {engine_vs_bf16:.4f}; peft-bf16 vs peft-fp32 {bf16_vs_fp32:.4f}; "
          f"engine-bf16 vs peft-fp32 on {int(decisive.sum())}/{len(tokens)} decisive positions {decisive_rate:.4f}")
    assert decisive.sum() > len(tokens) // 2
    assert decisive_rate >= 0.99
    assert engine_vs_bf16 >= bf16_vs_fp32 - 0.03, "no worse than peft's own bf16 against float32"
