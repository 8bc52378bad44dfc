"""Next-token choice per sequence: greedy, or temperature with top-k / top-p, from a per-request generator.

The sampled rows are filtered together, as one batch of tensor ops (a Python loop of ~10 small ops per row
was ~100 launches per 10 sampled sequences on a GPU, on the step's critical path). Only the random draw is per
row, from each request's own generator, so a seeded request gets the same tokens whatever else is batched.
"""
import torch

from fair_lora.sampling_params import SamplingParams


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> tuple[list[int], list[float]]:
    """`sample_on_device`, read back on the host (a device synchronisation)."""
    tokens, chosen = sample_on_device(logits, params, generators)
    return tokens.tolist(), chosen.tolist()


def sample_on_device(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, V] float32. Returns the chosen token of each row [B] int64 and its log-probability [B] float32
    under the model's own distribution (before temperature, top-k or top-p), as vLLM reports it. Nothing is
    read back: the engine's next step can take the tokens as its inputs while the host catches up."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        sampled = [params[i] for i in rows]
        probs, order = filtered_probs(logits[rows], sampled)
        draws = _uniforms([generators[i] for i in rows], logits.device)
        # Inverse CDF in the sorted order: the first token whose cumulative probability exceeds the draw.
        cdf = probs.cumsum(-1)
        pick = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).clamp_max(cdf.shape[1] - 1)
        tokens[rows] = order.gather(1, pick)[:, 0]
    return tokens, logprobs.gather(1, tokens[:, None])[:, 0]


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's sampling distribution after temperature, top-k and top-p, in descending-logit order (in token
    order when no row cuts): (probs [R, V], order [R, V], the token ids of those columns). A token tied with the k-th stays (top-k);
    top-p drops a token once the tokens before it already cover top_p, and always keeps the first."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=device)
    if not any(p.top_k or p.top_p < 1.0 for p in params):  # temperature alone: no sort needed
        order = torch.arange(logits.shape[1], device=device).expand(len(params), -1)
        return torch.softmax(logits / temperature[:, None], dim=-1), order
    top_k = torch.tensor([p.top_k or logits.shape[1] for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=device)
    scaled, order = torch.sort(logits / temperature[:, None], dim=-1, descending=True)
    kth = scaled.gather(1, (top_k.clamp_max(logits.shape[1]) - 1)[:, None])
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    drop = ((probs.cumsum(-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None]
    return torch.softmax(scaled.masked_fill(drop, float("-inf")), dim=-1), order


def _uniforms(generators: list[torch.Generator | None], device: torch.device) -> torch.Tensor:
    """One uniform draw per row in [0, 1): from the row's generator, or the global one for unseeded rows."""
    draws = torch.rand(len(generators), device=device)
    for i, gen in enumerate(generators):
        if gen is not None:
            draws[i] = torch.rand((), generator=gen, device=device)
    return draws
