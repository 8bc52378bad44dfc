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


def test_sentencepiece_space_survives_a_skipped_special_token():
    """A Metaspace decoder (Llama-2, Mistral) drops the leading space of the first token it decodes; a special
    token that decodes to nothing must not make the token after it the first of a window."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "▁again": 5, ",": 6}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    backend.add_special_tokens([AddedToken("</s>", special=True)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", clean_up_tokenization_spaces=False)
    processor = OutputProcessor(tokenizer, set(), 10_000)  # as with ignore_eos: </s> does not end it
    seq = Sequence("r", None, [1], SamplingParams(max_tokens=100), RequestTimes(arrival=0.0))
    for token in [3, 2, 2, 4, 6, 2, 5]:
        processor.append_all([seq], [token], [0.0])
        assert seq.text == tokenizer.decode(seq.output_ids, skip_special_tokens=True)
    assert seq.text == "Hello world, again"


def test_outputs_report_each_step_the_new_tokens_and_the_whole_output():
    processor = OutputProcessor(None, set(), 10_000)
    seq = Sequence("r", None, [5, 6, 7], SamplingParams(max_tokens=4), RequestTimes(arrival=0.0))
    reasons, reported = [], []
    for token in (11, 12, 13, 14):
        reasons += processor.append_all([seq], [token], [0.0])
        out = OutputProcessor.output(seq)
        reported += out.new_token_ids
        assert out.token_ids == seq.output_ids == reported and out.prompt_token_ids == [5, 6, 7]
    assert reasons == [None, None, None, "length"]
    assert seq.num_output == 4 and seq.output_slice(1, 3) == [12, 13] and seq.output_slice(2) == [13, 14]
