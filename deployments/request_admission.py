"""A GenerateRequest into the engine: its prompt's token ids (chat template applied), its sampling parameters,
and the engine's stream for it; requests for an adapter being unloaded are refused."""
import asyncio

from deployments.prompt_render import is_token_ids, render_prompt
from deployments.worker_protocol import GenerateRequest
from fair_lora import RequestError, SamplingParams, UnknownAdapterError
from fair_lora.serving.async_engine import AsyncLLMEngine, RequestStream


async def admit(
    engine: AsyncLLMEngine, request: GenerateRequest, unloading: set[str], deltas: bool = True
) -> RequestStream:
    """Raises the FairLoRAError the request is refused for, before any output."""
    if is_token_ids(request):  # nothing to render: a thread hop per request would only cost CPU
        prompt = render_prompt(engine.tokenizer, request)
    else:
        prompt = await asyncio.to_thread(render_prompt, engine.tokenizer, request)
    max_tokens = request.max_tokens
    if max_tokens is None:
        max_tokens = max(engine.max_model_len - len(prompt), 1)
    try:
        params = SamplingParams(max_tokens=max_tokens, **request.sampling)
    except (ValueError, TypeError) as error:  # the user's values: a 400, not a failed worker
        raise RequestError(f"invalid sampling parameters: {error}") from error
    if request.adapter in unloading:
        raise UnknownAdapterError(f"adapter {request.adapter!r} is being unloaded")
    # No await between that check and the add being sent to the engine (token-id prompts add without one): an
    # unload's in-use check, sent after the check above, reaches the engine after this request.
    return await engine.add(prompt, request.adapter, params, request.request_id, request.client, deltas)
