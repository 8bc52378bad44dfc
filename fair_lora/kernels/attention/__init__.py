"""Paged attention: decode and prefill kernels over the block-table KV cache, and the cache write."""
