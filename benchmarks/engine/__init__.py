"""The engine alone, step by step: decode/prefill step times against the roofline and against transformers + peft
(bench), the hot merge, step profiles (profile_step), per-step output processing (postprocess)."""
