"""Sampled tokens' effects on their sequences: text, stop checks, and the RequestOutput reported for each.
Text is detokenized incrementally, a step's sequences in one call (engine/detokenizer.py)."""
import time

from fair_lora.engine.detokenizer import Detokenizer, cut_at_stop
from fair_lora.engine.sequence import Sequence
from fair_lora.outputs import RequestOutput


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int], max_model_len: int) -> None:
        """tokenizer: None for outputs of token ids only (no text, no stop strings): a serving front-end then
        detokenizes and checks stop strings off the engine's process."""
        self.eos_ids, self.max_model_len = eos_ids, max_model_len
        self.detokenizer = Detokenizer(tokenizer) if tokenizer is not None else None

    def append_all(self, seqs: list[Sequence], tokens: list[int], logprobs: list[float]) -> list[str | None]:
        """Add each sampled token to its sequence; returns each one's finish reason (None: it goes on)."""
        now = time.monotonic()
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            seq.token_ids.append(token)
            seq.logprobs.append(logprob)
            seq.times.first_token = seq.times.first_token or now
        if self.detokenizer is not None:
            self.detokenizer.update(seqs)
        return [self._finish_reason(seq, token) for seq, token in zip(seqs, tokens)]

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in self.eos_ids and not p.ignore_eos:
            return "stop"
        if self.detokenizer is not None and p.stop and cut_at_stop(seq, p.stop):
            return "stop"
        if seq.num_output >= p.max_tokens or len(seq.token_ids) >= self.max_model_len:  # resolved tokens only
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
