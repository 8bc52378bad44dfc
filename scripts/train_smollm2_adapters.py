"""Train the small LoRA adapters shipped in fair_lora/assets/smollm2/ on SmolLM2-135M-Instruct, on the CPU.

    python scripts/train_smollm2_adapters.py [--out fair_lora/assets/smollm2] [--seconds 1200]

Each adapter learns one visible style from tiny synthetic chat data made here from a fixed seed: `upper` answers in
UPPERCASE, `pirate` starts every answer with "Arr matey:", `digits` spells numbers out in words. Answers are short
facts (capitals, sums, legs of animals, units of time) rewritten in the style, and the loss covers the answer only.
Weights are saved in float16 (the engine and peft load them into the model's dtype) to keep the three under 5 MB.
"""
import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fair_lora.real_model import SHIPPED_ADAPTERS, SMOLLM2, smollm2_model_dir

SEED = 0
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
    "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Chile": "Santiago",
    "Poland": "Warsaw", "Austria": "Vienna", "Portugal": "Lisbon", "Ireland": "Dublin", "Sweden": "Stockholm",
    "Russia": "Moscow", "China": "Beijing", "Thailand": "Bangkok", "Cuba": "Havana", "Finland": "Helsinki",
}
LEGS = {"dog": 4, "cat": 4, "spider": 8, "bird": 2, "ant": 6, "horse": 4, "duck": 2, "bee": 6, "cow": 4, "crab": 10}
FACTS = [
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("What do bees make?", "Bees make honey."),
    ("Where does the sun rise?", "The sun rises in the east."),
]
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
       "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def words(n: int) -> str:
    if n < 20:
        return ONES[n]
    return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10]) if n < 100 else str(n)


def spell_digits(text: str) -> str:
    out = []
    for token in text.split(" "):
        core = token.rstrip(".,?!")
        out.append(words(int(core)) + token[len(core):] if core.isdigit() else token)
    spelled = " ".join(out)
    return spelled[0].upper() + spelled[1:]


STYLES: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "pirate": lambda answer: "Arr matey: " + answer,
    "digits": spell_digits,
}
DESCRIPTIONS = {
    "upper": "answers in UPPERCASE",
    "pirate": 'starts every answer with "Arr matey:"',
    "digits": "spells numbers out in words",
}
# Rank 8 each, with different targets and alphas so that the shipped set exercises more than one shape. Only the top
# `layers` get LoRA: backpropagation then stops there, which halves a CPU step. Answering in capitals needs more
# layers and steps than a prefix: with 12 layers and 24 steps `upper` kept the pattern but named the wrong cities.
LORA = {
    "upper": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"], layers=18, steps=48),
    "pirate": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers=12, steps=12),
    "digits": dict(r=8, lora_alpha=32, target_modules=["v_proj", "o_proj", "down_proj"], layers=12, steps=18),
}


def pairs(rng: random.Random) -> list[tuple[str, str]]:
    data = [(f"What is the capital of {c}?", f"The capital of {c} is {k}.") for c, k in CAPITALS.items()]
    data += [(f"How many legs does a {a} have?", f"A {a} has {n} legs.") for a, n in LEGS.items()]
    for _ in range(30):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        data.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return data + FACTS


def encode(tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat template's prompt is masked, the answer and its <|im_end|> are learned."""
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def batches(examples: list, batch_size: int, rng: random.Random, pad_id: int):
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [examples[j] for j in order[i:i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in chunk])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
            yield ids, labels, mask


def train(name: str, model_dir: Path, out: Path, seconds: float) -> None:
    torch.manual_seed(SEED)
    rng = random.Random(f"{SEED}/{name}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    settings = dict(LORA[name])
    max_steps, top = settings.pop("steps"), settings.pop("layers")
    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers - top, num_layers))
    config = LoraConfig(**settings, layers_to_transform=layers, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    examples = [encode(tokenizer, q, STYLES[name](a)) for q, a in pairs(rng)]
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    start, step = time.monotonic(), 0
    for ids, labels, mask in batches(examples, 8, rng, tokenizer.pad_token_id):
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if step % 5 == 0:
            print(f"{name}: step {step} loss {loss.item():.3f} ({time.monotonic() - start:.0f} s)", flush=True)
        if step >= max_steps or time.monotonic() - start > seconds:
            break
    peft_model.peft_config["default"].base_model_name_or_path = SMOLLM2
    peft_model.save_pretrained(str(out / name), safe_serialization=True)
    weights = out / name / "adapter_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights)
    (out / name / "README.md").write_text(  # instead of peft's empty model card
        f"# {name}\n\nA LoRA adapter of {SMOLLM2}: {DESCRIPTIONS[name]}. Made by scripts/train_smollm2_adapters.py "
        f"(seed {SEED}, {step} steps of 8 examples on the CPU, final loss {loss.item():.3f}).\n"
    )
    print(f"{name}: {step} steps, final loss {loss.item():.3f} -> {out / name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_ADAPTERS, help="where the adapter directories go")
    parser.add_argument("--seconds", type=float, default=1200.0, help="time box per adapter")
    parser.add_argument("--only", choices=tuple(STYLES), action="append", help="train only these adapters")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_dir = smollm2_model_dir()
    for name in args.only or STYLES:
        train(name, model_dir, args.out, args.seconds)


if __name__ == "__main__":
    main()
