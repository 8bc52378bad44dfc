"""Sampled tokens' effects on their sequences: text, stop checks, and the RequestOutput reported for each.

Text is detokenized incrementally, a step's sequences in one call: decoding every sequence's whole output at
every token (what `tokenizer.decode(output_ids)` per token does) costs O(length) per token, once per sequence,
in Python, on the step's critical path; at batch 256 that is milliseconds a step. Each sequence instead decodes
a short window: the tokens since `prefix_offset`, minus the text of those up to `read_offset` (decoding from the
same token keeps SentencePiece's leading-space handling alike on both sides, so the difference is the new text).
"""
import time

from fair_lora.engine.sequence import Sequence
from fair_lora.outputs import RequestOutput

REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes from an incomplete UTF-8 sequence


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int], max_model_len: int) -> None:
        self.tokenizer, self.eos_ids, self.max_model_len = tokenizer, eos_ids, max_model_len
        self.decode_many = _batch_decoder(tokenizer) if tokenizer is not None else None

    def append_all(self, seqs: list[Sequence], tokens: list[int], logprobs: list[float]) -> list[str | None]:
        """Add each sampled token to its sequence; returns each one's finish reason (None: it goes on)."""
        now = time.monotonic()
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            seq.token_ids.append(token)
            seq.logprobs.append(logprob)
            seq.times.first_token = seq.times.first_token or now
        if self.decode_many is not None:
            self._detokenize(seqs)
        return [self._finish_reason(seq, token) for seq, token in zip(seqs, tokens)]

    def _detokenize(self, seqs: list[Sequence]) -> None:
        """seq.text = decode(output ids) for every sequence, from the two windows each decodes."""
        windows = []
        for seq in seqs:
            windows += [seq.output_slice(seq.prefix_offset, seq.read_offset), seq.output_slice(seq.prefix_offset)]
        texts = self.decode_many(windows)
        for i, seq in enumerate(seqs):
            prefix, full = texts[2 * i], texts[2 * i + 1]
            n = seq.num_output
            if not full.startswith(prefix):
                # The decoder rewrote text across the window's edge (a clean-up of spaces): decode it all once,
                # and start the next windows a few tokens back, so this does not repeat every step.
                seq.text = self.decode_many([seq.output_ids])[0]
                if not seq.text.endswith(REPLACEMENT):
                    seq.stable_text = seq.text
                    seq.prefix_offset, seq.read_offset = max(0, n - 5), n
                continue
            seq.text = seq.stable_text + full[len(prefix) :]
            # The windows move on only past new, whole characters: a token that decodes to nothing (a skipped
            # special token) must not start the next prefix window, or a SentencePiece decoder would treat the
            # token after it as the first and drop its leading space.
            if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
                seq.stable_text = seq.text
                seq.prefix_offset, seq.read_offset = seq.read_offset, n

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in self.eos_ids and not p.ignore_eos:
            return "stop"
        searched, seq.checked_chars = seq.checked_chars, len(seq.text)
        for stop in p.stop:
            # Only where new text could complete a stop string (searching all of it every token is O(n²)); a few
            # characters more, since the last ones may change when an incomplete UTF-8 sequence completes.
            at = seq.text.find(stop, max(0, searched - len(stop) - 4))
            if at != -1:
                seq.text = seq.text[:at]  # like vLLM: the stop string itself is not returned
                return "stop"
        if seq.num_output >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def output(seq: Sequence) -> RequestOutput:
        new = seq.output_slice(seq.num_emitted)
        seq.num_emitted = seq.num_output
        return RequestOutput(
            request_id=seq.request_id,
            adapter=seq.adapter,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_ids,  # the one copy of the output a step makes per sequence: the API's
            text=seq.text,
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            times=seq.times,
            logprobs=list(seq.logprobs) if seq.params.logprobs else None,
            new_token_ids=new,
        )


def _batch_decoder(tokenizer):
    """A function decoding many id lists as `tokenizer.decode(ids, skip_special_tokens=True)` does each, in one
    call where the tokenizer's Rust backend does all of decode (no Python clean-up of spaces after it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda lists: backend.decode_batch(lists, skip_special_tokens=True)
    return lambda lists: [tokenizer.decode(ids, skip_special_tokens=True) for ids in lists]
