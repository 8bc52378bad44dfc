"""Incremental detokenization: after every token, each sequence's text is exactly what decoding its whole
output gives, with multi-byte characters split across tokens and special tokens among them."""
import random

import pytest
from transformers import AutoTokenizer

from fair_lora import SamplingParams
from fair_lora.engine.output_processor import OutputProcessor
from fair_lora.engine.sequence import Sequence
from fair_lora.outputs import RequestTimes

TEXTS = ["¿Qué tal? 🙂 naïve café — 東京", "plain ascii, with spaces  and\ttabs\n", "🙂🙂🙂ééé"]


class DecodeOnly:
    """The tokenizer without its Rust backend in view: the processor's per-sequence decode path."""

    def __init__(self, tokenizer) -> None:
        self.decode = tokenizer.decode


@pytest.fixture(scope="module")
def tokenizer(demo):
    return AutoTokenizer.from_pretrained(demo.model_dir)


@pytest.mark.parametrize("backend", [True, False], ids=["one-call", "per-sequence"])
def test_text_equals_full_decode_after_every_token(tokenizer, backend):
    rng = random.Random(0)
    streams = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    specials = sorted(tokenizer.all_special_ids)
    streams.append([rng.choice(streams[0] + specials) for _ in range(60)])  # shuffled bytes: broken characters
    processor = OutputProcessor(tokenizer if backend else DecodeOnly(tokenizer), set(), 10_000)
    seqs = [Sequence(f"r{i}", None, [1, 2], SamplingParams(max_tokens=1000), RequestTimes(arrival=0.0))
            for i in range(len(streams))]
    for step in range(max(map(len, streams))):
        live = [(seq, ids[step]) for seq, ids in zip(seqs, streams) if step < len(ids)]
        processor.append_all([seq for seq, _ in live], [token for _, token in live], [0.0] * len(live))
        for seq, _ in live:
            assert seq.text == tokenizer.decode(seq.output_ids, skip_special_tokens=True)
    assert [seq.text for seq in seqs[:3]] == TEXTS
