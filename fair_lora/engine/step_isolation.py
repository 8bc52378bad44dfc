"""Running a step so that a failure is confined to the requests that cause it: if the batch's forward or sampling
raises, each half runs again (recursively), so the requests that make it fail finish with an "error" and the others
go on. Re-running is safe: nothing changes before sampling succeeded, and rewriting the same KV positions writes the
same values."""
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fair_lora.engine.scheduler import ScheduledSeq

FATAL_FAILURES = 8  # this many requests in a row failing alone means the engine is broken: step() raises


@dataclass(frozen=True)
class RanPart:
    """A part of a step's batch that ran: the tokens its sampling sequences drew (on the device, maybe not yet
    computed), or the error of its one request."""
    scheduled: list[ScheduledSeq]
    tokens: torch.Tensor | None  # [n_sampling] int64
    logprobs: torch.Tensor | None  # [n_sampling] float32
    error: Exception | None = None


def _poisons_device(error: Exception) -> bool:
    """A CUDA error leaves the device context unusable for every later request: no isolating it."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(error, accelerator_error) or "CUDA error" in str(error)


class StepIsolation:
    def __init__(
        self, forward_and_sample: Callable[[list[ScheduledSeq]], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        self.forward_and_sample = forward_and_sample
        self.consecutive_failures = 0

    def run(self, scheduled: list[ScheduledSeq]) -> Iterator[RanPart]:
        """The parts of the batch in order, lazily: the caller handles each before the next one runs."""
        if not scheduled:
            return
        try:
            tokens, logprobs = self.forward_and_sample(scheduled)
        except Exception as error:  # noqa: BLE001 - a request's failure must not stop everyone else's
            if _poisons_device(error) or len(scheduled) == 1 and self._failing_everyone():
                raise
            failure = error
        else:
            self.consecutive_failures = 0
            yield RanPart(scheduled, tokens, logprobs)
            return
        if len(scheduled) == 1:
            yield RanPart(scheduled, None, None, failure)
            return
        half = len(scheduled) // 2
        yield from self.run(scheduled[:half])
        yield from self.run(scheduled[half:])

    def _failing_everyone(self) -> bool:
        """True once FATAL_FAILURES requests in a row failed alone: then the engine, not a request, is broken."""
        self.consecutive_failures += 1
        return self.consecutive_failures >= FATAL_FAILURES
