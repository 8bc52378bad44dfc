"""OpenAI response bodies and stream chunks for completions and chat completions."""
import json
import time
from dataclasses import dataclass, field

from deployments.worker_protocol import Admitted, Completion, Delta


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@dataclass
class Result:
    """A whole request's output, accumulated from its deltas."""

    admitted: Admitted
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    finish_reason: str | None = None

    @classmethod
    def of(cls, completion: Completion) -> "Result":
        return cls(
            completion.admitted, completion.text, list(completion.token_ids), list(completion.logprobs or []),
            list(completion.tokens or []), completion.finish_reason,
        )

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs or []
        self.tokens += delta.tokens or []
        self.finish_reason = delta.finish_reason

    @property
    def headers(self) -> dict[str, str]:
        return self.admitted.headers

    def usage(self) -> dict:
        prompt, completion = self.admitted.prompt_tokens, len(self.token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class OpenAIFormat:
    """Builds the bodies of one request: `chat` picks chat.completion over text_completion."""

    request_id: str
    model: str
    chat: bool
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def logprobs(self, tokens: list[str], logprobs: list[float], want: bool) -> dict | None:
        if not want:
            return None
        if self.chat:
            pairs = zip(tokens, logprobs)
            return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in pairs]}
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": None}

    def response(self, result: Result, want_logprobs: bool) -> dict:
        logprobs = self.logprobs(result.tokens, result.logprobs, want_logprobs)
        choice: dict = {"index": 0, "logprobs": logprobs, "finish_reason": result.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        return {**body, "usage": result.usage()}

    def chunk(self, text: str, finish_reason: str | None, logprobs: dict | None, first: bool = False) -> dict:
        choice: dict = {"index": 0, "logprobs": logprobs, "finish_reason": finish_reason}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
        else:
            choice["text"] = text
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self, result: Result) -> dict:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        return {**body, "usage": result.usage()}
