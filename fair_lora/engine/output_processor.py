"""A sampled token's effects on its sequence: text, stop checks, and the RequestOutput reported for it."""
import time

from fair_lora.engine.sequence import Sequence
from fair_lora.outputs import RequestOutput


class OutputProcessor:
    def __init__(self, tokenizer, eos_ids: set[int], max_model_len: int) -> None:
        self.tokenizer, self.eos_ids, self.max_model_len = tokenizer, eos_ids, max_model_len

    def append(self, seq: Sequence, token: int, logprob: float) -> str | None:
        """Add the token to `seq`; returns the finish reason if the sequence is now done."""
        seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        seq.times.first_token = seq.times.first_token or time.monotonic()
        if self.tokenizer is not None:
            seq.text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        return self._finish_reason(seq, token)

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
        if len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def output(seq: Sequence) -> RequestOutput:
        new = seq.output_ids[seq.num_emitted :]
        seq.num_emitted = len(seq.output_ids)
        return RequestOutput(
            request_id=seq.request_id,
            adapter=seq.adapter,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_ids,
            text=seq.text,
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            times=seq.times,
            logprobs=list(seq.logprobs) if seq.params.logprobs else None,
            new_token_ids=new,
        )
