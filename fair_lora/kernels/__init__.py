from fair_lora.kernels.lora_batch import LoRABatch, build_lora_batch
from fair_lora.kernels.lora_correction import lora_correction

__all__ = ["LoRABatch", "build_lora_batch", "lora_correction"]
