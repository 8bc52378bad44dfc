"""Next-token choice per sequence: greedy, or temperature with top-k / top-p, from a per-request generator."""
import torch

from fair_lora.sampling_params import SamplingParams


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> tuple[list[int], list[float]]:
    """logits: [B, V] float32. Returns the chosen token of each row and its log-probability under the
    model's own distribution (before temperature, top-k or top-p), as vLLM reports it."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    for row, (p, gen) in enumerate(zip(params, generators)):
        if not p.greedy:
            tokens[row] = _sample_row(logits[row], p, gen)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()


def _sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    scaled = logits / p.temperature
    if p.top_k:
        kth = torch.topk(scaled, min(p.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token once the tokens before it already cover top_p; the first token always stays.
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p.top_p
        scaled = scaled.scatter(0, order[drop], float("-inf"))
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=gen)[0]
