"""A step whose forward and sampling are queued on the device but not yet read back by the host.

With async scheduling the engine launches step N, then reads step N-1's tokens while the device computes N,
and schedules and prepares N+1 before N ends: the host's work (scheduling, metadata, detokenizing, outputs)
overlaps the device's instead of leaving it idle between steps, as in vLLM's async scheduling and SGLang's
overlap scheduler. Sampled tokens stay on the device, where step N+1 takes its inputs from them; the host gets
a copy through pinned memory, waited for only when the step is resolved.
"""
from dataclasses import dataclass, field

import torch

from fair_lora.engine.sequence import Sequence
from fair_lora.outputs import RequestOutput


@dataclass
class LaunchedStep:
    sampling: list[Sequence]  # the sequences that drew a token, in row order of `tokens`
    tokens: torch.Tensor | None  # [N] int64 on the device: the next step's inputs
    logprobs: torch.Tensor | None  # [N] float32 on the device
    failed: list[RequestOutput] = field(default_factory=list)  # requests that failed alone at launch
    host_tokens: torch.Tensor | None = None  # pinned copies, valid once `copied` has happened
    host_logprobs: torch.Tensor | None = None
    copied: torch.cuda.Event | None = None

    @classmethod
    def launch(
        cls, sampling: list[Sequence], parts: list[tuple[torch.Tensor, torch.Tensor]], failed: list[RequestOutput]
    ) -> "LaunchedStep":
        """parts: each part's (tokens, logprobs), in the order of `sampling`; starts their copy to the host."""
        if not parts:
            return cls(sampling, None, None, failed)
        tokens = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        logprobs = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        step = cls(sampling, tokens, logprobs, failed)
        if tokens.device.type == "cuda":
            step.host_tokens = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            step.host_logprobs = torch.empty(logprobs.shape, dtype=logprobs.dtype, pin_memory=True)
            step.host_tokens.copy_(tokens, non_blocking=True)
            step.host_logprobs.copy_(logprobs, non_blocking=True)
            step.copied = torch.cuda.Event()
            step.copied.record(torch.cuda.current_stream(tokens.device))
        else:
            step.host_tokens, step.host_logprobs = tokens, logprobs
        return step

    @property
    def rows(self) -> dict[Sequence, int]:
        return {seq: row for row, seq in enumerate(self.sampling)}

    def read(self) -> tuple[list[int], list[float]]:
        """The sampled tokens and their logprobs on the host; waits for the device only as long as it must."""
        if self.tokens is None:
            return [], []
        if self.copied is not None:
            self.copied.synchronize()
        return self.host_tokens.tolist(), self.host_logprobs.tolist()
