"""The LoRA correction (shrink, expand), the hot merge, and the batch metadata they read."""
