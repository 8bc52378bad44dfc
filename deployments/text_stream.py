"""Turns "all text so far" into deltas that never have to be taken back."""
REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes from an incomplete UTF-8 sequence


class TextStream:
    def __init__(self, stop: list[str]) -> None:
        # A stop string may be cut off the text once it completes: hold back what could be its beginning.
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def push(self, text: str, finished: bool) -> str:
        """The part of `text` that is safe to send now and was not sent before."""
        if not finished:
            text = text.rstrip(REPLACEMENT)  # the next token may complete the character
            text = text[: len(text) - self.holdback] if self.holdback else text
        if len(text) <= len(self.sent):
            return ""
        # A tokenizer whose decode rewrites earlier characters (clean-up of spaces) can make `text` stop
        # extending what was sent; what was sent stays sent, and the stream goes on from the same length
        # rather than falling silent until the end.
        delta, self.sent = text[len(self.sent) :], text
        return delta
