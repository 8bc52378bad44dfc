"""Sends a step's host metadata to the device in one copy.

A decode step needs a dozen small integer tables (token ids, positions, cache slots, block tables, the
correction's entries and tiles). Sent one by one from pageable memory, each is a synchronous copy with its
own fixed cost, and together they cost the runner's prepare several times its Python work.
Here they travel as one int64 array through a pinned staging buffer, asynchronously; the next step waits for
that copy before it reuses the buffer.
"""
import numpy as np
import torch


class HostUpload:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.staging = torch.empty(0, dtype=torch.int64)
        self.copied: torch.cuda.Event | None = None

    def __call__(self, host: np.ndarray) -> torch.Tensor:
        """host: 1-D int64. Returns it on the device (on the CPU: the same memory)."""
        values = torch.from_numpy(host)
        if self.device.type != "cuda":
            return values
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copy may still be reading the staging buffer
        if len(self.staging) < len(host):
            self.staging = torch.empty(max(len(host), 2 * len(self.staging)), dtype=torch.int64, pin_memory=True)
        staged = self.staging[: len(host)]
        staged.copy_(values)
        out = staged.to(self.device, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record(torch.cuda.current_stream(self.device))
        return out
