"""A request's prompt as token ids: plain text, ids as given, or chat messages through the chat template."""
from jinja2 import TemplateError

from deployments.worker_protocol import GenerateRequest
from fair_lora import RequestError


def render_prompt(tokenizer, request: GenerateRequest) -> list[int]:
    if request.messages is None:
        # The engine's own encoding of text prompts (special tokens included), done here to count them.
        return tokenizer.encode(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
    if tokenizer.chat_template is None:
        raise RequestError("this model has no chat template: use /v1/completions with a plain prompt")
    try:
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise RequestError(f"the chat template rejected the messages: {error}") from None
    # The template already wrote the special tokens it wants (e.g. BOS); do not add them twice.
    return tokenizer.encode(text, add_special_tokens=False)
