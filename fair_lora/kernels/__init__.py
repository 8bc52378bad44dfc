from fair_lora.kernels.lora.batch import LoRABatch, build_lora_batch
from fair_lora.kernels.lora.correction import lora_correction
from fair_lora.kernels.lora.slots import LoRASlots

__all__ = ["LoRABatch", "LoRASlots", "build_lora_batch", "lora_correction"]
