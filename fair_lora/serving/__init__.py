"""The engine served from a process of its own: `AsyncLLMEngine` (tokenizing, detokenizing, streaming on the
asyncio side) talks to an engine core (`core_process`: only scheduling and steps) over a pipe."""
from fair_lora.serving.async_engine import AsyncLLMEngine

__all__ = ["AsyncLLMEngine"]
