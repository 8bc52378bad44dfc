"""The batched sampler: the distribution it samples from is the per-row reference's (temperature, then top-k,
then top-p), its draws follow that distribution, and a seeded row does not depend on its batch."""
import pytest
import torch

from fair_lora import SamplingParams
from fair_lora.layers.sampler import filtered_probs, sample


def reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row at a time, as the sampler did before it was batched: [V] probabilities by token id."""
    scaled = logits / p.temperature
    if p.top_k:
        kth = torch.topk(scaled, min(p.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p.top_p
        scaled = scaled.scatter(0, order[drop], float("-inf"))
    return torch.softmax(scaled, dim=-1)


PARAMS = [
    SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=5), SamplingParams(temperature=1.3, top_p=0.5),
    SamplingParams(temperature=0.9, top_k=50, top_p=0.9), SamplingParams(temperature=2.0, top_k=1),
    SamplingParams(temperature=1.0, top_p=0.01), SamplingParams(temperature=0.5, top_k=1000),
]


def test_batched_filter_equals_the_per_row_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(PARAMS), 300, generator=gen) * 3
    logits[0, :10] = 5.0  # ties
    probs, order = filtered_probs(logits, PARAMS)
    by_token = torch.zeros_like(probs).scatter(1, order, probs)
    for row, p in enumerate(PARAMS):
        torch.testing.assert_close(by_token[row], reference_probs(logits[row], p), rtol=1e-5, atol=1e-7)


def test_temperature_only_rows_skip_the_sort_and_keep_the_distribution():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=t) for t in (0.5, 1.0, 1.7)]
    probs, order = filtered_probs(logits, params)
    by_token = torch.zeros_like(probs).scatter(1, order, probs)
    for row, p in enumerate(params):
        torch.testing.assert_close(by_token[row], reference_probs(logits[row], p))


def test_draws_follow_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(1)).repeat(20_000, 1)
    params = [SamplingParams(temperature=0.8, top_k=8)] * len(logits)
    tokens, _ = sample(logits, params, [None] * len(logits))
    counts = torch.bincount(torch.tensor(tokens), minlength=12).float()
    expected = reference_probs(logits[0], params[0]) * len(logits)
    assert counts[expected == 0].sum() == 0  # nothing outside the top-k
    sigma = (expected * (1 - expected / len(logits))).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1).all()


@pytest.mark.parametrize("position", [0, 2])
def test_a_seeded_row_draws_the_same_token_wherever_it_sits(position):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=5)
    alone, _ = sample(logits[position:position + 1], [seeded], [torch.Generator().manual_seed(5)])
    params = [SamplingParams(temperature=1.0)] * 4
    params[position] = seeded
    gens: list = [None] * 4
    gens[position] = torch.Generator().manual_seed(5)
    batched, logprobs = sample(logits, params, gens)
    assert batched[position] == alone[0]
    assert logprobs[position] == pytest.approx(torch.log_softmax(logits[position], -1)[alone[0]].item())
