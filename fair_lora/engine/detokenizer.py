"""Incremental detokenization and stop strings, for the in-process engine and for the serving front-end alike.

Decoding every request's whole output at every token (what `tokenizer.decode(output_ids)` per token does)
costs O(length) per token, in Python; at batch 256 that is milliseconds a step. Each output instead decodes a
short window: the tokens since `prefix_offset`, minus the text of those up to `read_offset` (decoding from the
same token keeps SentencePiece's leading-space handling alike on both sides, so the difference is the new
text). A batch of outputs is decoded in one tokenizer call.
"""
from dataclasses import dataclass, field
from typing import Protocol

REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes from an incomplete UTF-8 sequence


class TextState(Protocol):
    """One output as the detokenizer sees it (engine/sequence.py's Sequence, or OutputText below)."""

    text: str
    stable_text: str  # text of the output tokens before read_offset (it ends with whole characters)
    prefix_offset: int
    read_offset: int
    checked_chars: int  # characters of `text` already searched for stop strings

    @property
    def num_output(self) -> int: ...

    @property
    def output_ids(self) -> list[int]: ...

    def output_slice(self, start: int, end: int | None = None) -> list[int]: ...


class Detokenizer:
    def __init__(self, tokenizer) -> None:
        self.decode_many = _batch_decoder(tokenizer)

    def update(self, states: list[TextState]) -> None:
        """state.text = decode(output ids) for every state, from the two windows each decodes."""
        windows = []
        for s in states:
            windows += [s.output_slice(s.prefix_offset, s.read_offset), s.output_slice(s.prefix_offset)]
        texts = self.decode_many(windows)
        for i, s in enumerate(states):
            prefix, full = texts[2 * i], texts[2 * i + 1]
            n = s.num_output
            if not full.startswith(prefix):
                # The decoder rewrote text across the window's edge (a clean-up of spaces): decode it all once,
                # and start the next windows a few tokens back, so this does not repeat every step.
                s.text = self.decode_many([s.output_ids])[0]
                if not s.text.endswith(REPLACEMENT):
                    s.stable_text = s.text
                    s.prefix_offset, s.read_offset = max(0, n - 5), n
                continue
            s.text = s.stable_text + full[len(prefix) :]
            # The windows move on only past new, whole characters: a token that decodes to nothing (a skipped
            # special token) must not start the next prefix window, or a SentencePiece decoder would treat the
            # token after it as the first and drop its leading space.
            if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
                s.stable_text = s.text
                s.prefix_offset, s.read_offset = s.read_offset, n


def cut_at_stop(state: TextState, stops: list[str]) -> bool:
    """If a stop string now occurs in state.text, cut the text where it starts (like vLLM, the stop string
    itself is not returned) and return True."""
    searched, state.checked_chars = state.checked_chars, len(state.text)
    for stop in stops:
        # Only where new text could complete a stop string (searching all of it every token is O(n²)); a few
        # characters more, since the last ones may change when an incomplete UTF-8 sequence completes.
        at = state.text.find(stop, max(0, searched - len(stop) - 4))
        if at != -1:
            state.text = state.text[:at]
            return True
    return False


@dataclass(eq=False)
class OutputText:
    """A streamed request's output on the serving side: its token ids as they arrive, its text, and how much of
    the text was sent. Sent text is never taken back: what could still change is held back until it settles."""

    stops: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stable_text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    checked_chars: int = 0
    sent: int = 0  # characters of `text` already handed out as deltas

    @property
    def num_output(self) -> int:
        return len(self.ids)

    @property
    def output_ids(self) -> list[int]:
        return list(self.ids)

    def output_slice(self, start: int, end: int | None = None) -> list[int]:
        return self.ids[start:end]

    def take_delta(self, finished: bool) -> str:
        """The text that is safe to send now and was not sent before."""
        text = self.text
        if not finished:
            text = text.rstrip(REPLACEMENT)  # the next token may complete the character
            # A stop string may be cut off the text once it completes: hold back what could be its beginning.
            holdback = max((len(s) for s in self.stops), default=1) - 1
            text = text[: len(text) - holdback] if holdback else text
        if len(text) <= self.sent:
            return ""
        # A tokenizer whose decode rewrites earlier characters (clean-up of spaces) can make `text` stop
        # extending what was sent; what was sent stays sent, and the stream goes on from the same length
        # rather than falling silent until the end.
        delta, self.sent = text[self.sent :], len(text)
        return delta


def _batch_decoder(tokenizer):
    """A function decoding many id lists as `tokenizer.decode(ids, skip_special_tokens=True)` does each, in one
    call where the tokenizer's Rust backend does all of decode (no Python clean-up of spaces after it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda lists: backend.decode_batch(lists, skip_special_tokens=True)
    return lambda lists: [tokenizer.decode(ids, skip_special_tokens=True) for ids in lists]
