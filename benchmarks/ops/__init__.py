"""The Triton kernels alone: the LoRA correction (shrink/expand), decode attention, the hot merge."""
