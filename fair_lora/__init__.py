"""fair_lora: many LoRA adapters on one base model; the hot one merged, the rest corrected in the same batch."""
from fair_lora.config import EngineConfig
from fair_lora.engine.llm_engine import LLMEngine
from fair_lora.errors import (
    AdapterError,
    AdapterFormatError,
    AdapterInUseError,
    AdapterNameError,
    AdapterPathError,
    AdapterPoolFullError,
    FairLoRAError,
    HotSwitchError,
    ModelFormatError,
    QueueFullError,
    RequestError,
    UnknownAdapterError,
)
from fair_lora.hot_adapter.popularity import PopularityConfig
from fair_lora.outputs import RequestOutput
from fair_lora.sampling_params import SamplingParams

__all__ = [
    "AdapterError",
    "AdapterFormatError",
    "AdapterInUseError",
    "AdapterNameError",
    "AdapterPathError",
    "AdapterPoolFullError",
    "EngineConfig",
    "FairLoRAError",
    "HotSwitchError",
    "LLMEngine",
    "ModelFormatError",
    "PopularityConfig",
    "QueueFullError",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "UnknownAdapterError",
]
