"""SamplingParams refuses what a step could not run (a top_k past int64 crashed the sampler) with a RequestError
that names the field, and keeps vLLM's meanings for what it accepts."""
import math

import pytest
import torch

from fair_lora import RequestError, SamplingParams
from fair_lora.layers.sampler import sample
from fair_lora.sampling_params import MAX_INT, MAX_SEED, MAX_STOP_CHARS, MAX_STOP_STRINGS

BAD = [
    ("top_k", 9223372036854775808),
    ("top_k", MAX_INT + 1),
    ("top_k", -2),
    ("top_k", 1.0),
    ("top_k", True),
    ("max_tokens", 0),
    ("max_tokens", MAX_INT + 1),
    ("max_tokens", 4.0),
    ("max_tokens", "4"),
    ("max_tokens", True),
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "1"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", math.nan),
    ("seed", -1),
    ("seed", MAX_SEED + 1),
    ("seed", 3.0),
    ("stop", ["x"] * (MAX_STOP_STRINGS + 1)),
    ("stop", "x" * (MAX_STOP_CHARS + 1)),
    ("stop", [""]),
    ("stop", [5]),
    ("stop", 5),
    ("ignore_eos", "yes"),
    ("logprobs", 1),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r:.20}" for f, v in BAD])
def test_out_of_range_value_is_a_request_error_naming_its_field(field, value):
    with pytest.raises(RequestError, match=f"^{field} must be"):
        SamplingParams(**{field: value})


def test_a_hostile_value_does_not_make_a_huge_message():
    with pytest.raises(RequestError) as info:
        SamplingParams(stop=["x" * 10_000] * 1000)
    assert len(str(info.value)) < 300


def test_accepted_values_keep_their_meaning():
    assert SamplingParams(top_k=-1).top_k == 0  # no cut, like 0
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(temperature=0).greedy and not SamplingParams(temperature=0.5).greedy
    longest_stop = ["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS
    edge = SamplingParams(max_tokens=MAX_INT, top_k=MAX_INT, seed=MAX_SEED, stop=longest_stop)
    assert (edge.max_tokens, edge.top_k, edge.seed) == (MAX_INT, MAX_INT, MAX_SEED)


def test_the_largest_top_k_samples_like_no_cut():
    logits = torch.randn(2, 50)
    params = [SamplingParams(temperature=1.0, top_k=MAX_INT, seed=1), SamplingParams(temperature=1.0, seed=1)]
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    tokens, _ = sample(logits[[0, 0]], params, generators)
    assert tokens[0] == tokens[1]
