"""Host time of a decode step's output handling (`LLMEngine._resolve`: append, stop checks, RequestOutputs) as
outputs grow: it must stay about flat in the output length, or long generations pay for it quadratically.

    python -m benchmarks.engine.postprocess [--batch 128] [--tokens 2000]

Runs a tiny random model on the CPU (no tokenizer: detokenization has its own test and windows); prints the mean
over the 50 steps before each mark.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common.report import REPO
from benchmarks.engine.plan import TINY_CONFIG
from fair_lora import EngineConfig, LLMEngine, SamplingParams

WINDOW = 50


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tokens", type=int, default=2000)
    a = p.parse_args()
    torch.set_num_threads(1)
    config = {**json.loads((REPO / "configs" / "llama-2-7b.json").read_text()), **TINY_CONFIG, "num_hidden_layers": 1,
              "max_position_embeddings": a.tokens + 64}
    model_dir = Path(tempfile.mkdtemp())
    (model_dir / "config.json").write_text(json.dumps(config))
    engine = LLMEngine(EngineConfig(
        model=str(model_dir), load_format="dummy", device="cpu", dtype="float32", mode="slora", auto_hot=False,
        max_adapter_slots=1, max_lora_rank=4, max_num_seqs=a.batch, max_num_batched_tokens=8192,
        num_kv_blocks=a.batch * (a.tokens // 16 + 4), max_model_len=a.tokens + 64,
    ))
    for i in range(a.batch):
        prompt = [(7 * i + j) % 200 for j in range(16)]
        engine.add_request(prompt, None, SamplingParams(max_tokens=a.tokens + 8, ignore_eos=True))
    spent, resolve = [0.0], engine._resolve

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = resolve(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return result

    engine._resolve = timed
    marks = sorted({m for m in (WINDOW + 1, 250, 1000, 2000, a.tokens) if WINDOW < m <= a.tokens})
    for step in range(1, a.tokens + 1):  # the first step is the prefill; step k reports output token k
        if step in {m - WINDOW + 1 for m in marks}:
            spent[0] = 0.0
        engine.step()
        if step in marks:
            print(f"batch {a.batch}, output {step:5d} tokens: _postprocess {spent[0] / WINDOW * 1e3:.3f} ms a step",
                  flush=True)


if __name__ == "__main__":
    main()
