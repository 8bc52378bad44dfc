"""A request's prompt as token ids: plain text, ids as given, or chat messages through the chat template."""
from jinja2 import TemplateError

from deployments.worker_protocol import GenerateRequest
from fair_lora import RequestError


def is_token_ids(request: GenerateRequest) -> bool:
    """The prompt came as token ids: nothing to tokenize or template."""
    return request.messages is None and not isinstance(request.prompt, str)


def render_prompt(tokenizer, request: GenerateRequest) -> list[int]:
    """Runs in the worker's process, off the engine's: tokenizing a long prompt never delays a step."""
    if is_token_ids(request):
        return list(request.prompt)
    if tokenizer is None:
        raise RequestError("this model has no tokenizer: send the prompt as token ids to /v1/completions")
    if request.messages is None:
        return tokenizer.encode(request.prompt)  # the engine's own encoding of text prompts (special tokens too)
    if tokenizer.chat_template is None:
        raise RequestError("this model has no chat template: use /v1/completions with a plain prompt")
    try:
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise RequestError(f"the chat template rejected the messages: {error}") from None
    # The template already wrote the special tokens it wants (e.g. BOS); do not add them twice.
    return tokenizer.encode(text, add_special_tokens=False)
