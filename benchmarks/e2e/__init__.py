"""The engine end to end through LLMEngine.generate(): S-LoRA power-law traces, cold and warm passes, decode GPU-busy
share, Triton compiles during serving."""
