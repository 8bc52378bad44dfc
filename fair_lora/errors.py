"""Errors a user can cause. Each names what was wrong and what to do; the HTTP layer maps them to 4xx."""


class FairLoRAError(Exception):
    """Base class of every error fair_lora raises on purpose."""


class AdapterError(FairLoRAError):
    """An adapter directory or name was refused; the engine is unchanged."""


class AdapterNameError(AdapterError):
    """The adapter name is empty, has path separators, or collides with the base model's name."""


class AdapterFormatError(AdapterError):
    """The adapter's files are missing, unsafe (pickle), truncated, corrupt, or do not fit the base model."""


class AdapterPathError(AdapterError):
    """The adapter directory lies outside the configured adapter roots."""


class UnknownAdapterError(AdapterError):
    """A request or command named an adapter that is not loaded."""


class AdapterInUseError(AdapterError):
    """The adapter cannot be unloaded or evicted now: it is merged, or requests still use it."""


class AdapterPoolFullError(AdapterError):
    """Every device slot holds an adapter that running requests need; retry when some finish."""


class HotSwitchError(FairLoRAError):
    """Merging the hot adapter failed part-way; the base weights were restored and nothing is merged."""


class ModelFormatError(FairLoRAError):
    """The model directory is missing files, holds pickle weights only, or has an unsupported architecture."""


class RequestError(FairLoRAError):
    """A request is malformed: bad sampling parameters, empty prompt, or longer than the context allows."""


class QueueFullError(FairLoRAError):
    """The engine's waiting queue is at its configured limit; retry later."""
