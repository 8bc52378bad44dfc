"""A request's prompt against what the engine can hold: token ids in the vocabulary, prompt + max_tokens within the
context and within the KV cache (a request that could never be scheduled is refused at once, not left waiting)."""
from fair_lora.engine.block_manager import BlockManager
from fair_lora.errors import RequestError
from fair_lora.sampling_params import SamplingParams


def check_prompt(
    ids: list[int], params: SamplingParams, vocab_size: int, max_model_len: int, blocks: BlockManager
) -> None:
    if not all(isinstance(t, int) and 0 <= t < vocab_size for t in ids):
        raise RequestError(f"prompt token ids must be integers in [0, {vocab_size})")
    if len(ids) + params.max_tokens > max_model_len:
        raise RequestError(
            f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context of "
            f"{max_model_len} tokens; shorten the prompt or lower max_tokens"
        )
    if blocks.blocks_for(len(ids) + params.max_tokens) > blocks.num_blocks:
        raise RequestError(
            f"prompt + max_tokens ({len(ids) + params.max_tokens} tokens) needs more KV cache than the engine "
            f"has ({blocks.num_blocks} blocks of {blocks.block_size}); lower max_tokens"
        )
