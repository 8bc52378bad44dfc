"""`python -m fair_lora <verb>`: one function per verb, `main` only parses and dispatches. Mistakes a user can make
(an unknown adapter, a bad sampling value, a missing model) end in one `error:` line and exit status 2, no traceback."""
import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fair_lora.demo import ARCHS, DemoSpec, default_demo_root, make_demo
from fair_lora.errors import FairLoRAError
from fair_lora.real_model import SMOLLM2

DEFAULT_PROMPTS = ("What is the capital of France?", "How many legs does a spider have?", "What is 12 plus 7?")
DEMO = "demo"  # --model's name for the tiny random demo model


def cmd_demo(args: argparse.Namespace) -> int:
    spec = DemoSpec(seed=args.seed, num_adapters=args.num_adapters, arch=args.arch)
    assets = make_demo(args.out or default_demo_root(), spec)
    adapters = {name: str(path) for name, path in assets.adapters.items()}
    print(json.dumps({"model_dir": str(assets.model_dir), "adapters": adapters}, indent=2))
    return 0


def _add_demo(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("demo", help="create (or reuse) the tiny random demo model and adapters; print their "
                              "paths as JSON", description="Create (or reuse) the tiny random demo model (a "
                              "byte-level Llama) and its PEFT adapters, made from a seed; print their paths as JSON.")
    parser.add_argument("--out", type=Path, default=None, help="root directory (default: $FAIR_LORA_DEMO_DIR "
                        "or ~/.cache/fair_lora/demo); the assets land in a subdirectory named by the spec's hash")
    parser.add_argument("--seed", type=int, default=DemoSpec.seed, help="seed of every weight (default: %(default)s)")
    parser.add_argument("--num-adapters", type=int, default=DemoSpec.num_adapters, help="adapters to make")
    parser.add_argument("--arch", choices=ARCHS, default=DemoSpec.arch, help="model architecture")
    parser.set_defaults(run=cmd_demo)


def cmd_generate(args: argparse.Namespace) -> int:
    from fair_lora import LLMEngine, SamplingParams  # the engine import is slow; demo needs none

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    adapters = dict(_name_dir(a) for a in args.load)
    engine = LLMEngine(_engine_config(args, adapters))
    names = args.adapter or [None, *engine.adapters()]  # every prompt under the base model and each adapter
    unknown = sorted({n for n in names if n is not None} - set(engine.adapters()))
    if unknown:
        raise FairLoRAError(f"unknown adapter(s) {', '.join(unknown)}; loaded: {', '.join(engine.adapters())}")
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    pairs = [(p, a) for p in prompts for a in names] if not args.adapter else \
        [(prompts[i % len(prompts)], names[i % len(names)]) for i in range(max(len(prompts), len(names)))]
    inputs = [_render(engine.tokenizer, p, args.raw) for p, _ in pairs]
    outputs = engine.generate(inputs, [a for _, a in pairs], params)
    for (prompt, _), out in zip(pairs, outputs):
        print(json.dumps({"adapter": out.adapter, "prompt": prompt, "text": out.text, "finish_reason": out.finish_reason}))
    print(json.dumps({"stats": engine.stats()}))
    return 0


def _engine_config(args: argparse.Namespace, adapters: dict[str, str]):
    import torch

    from fair_lora import EngineConfig

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise FairLoRAError(f"--device {args.device!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FairLoRAError(f"--device {args.device}: no CUDA device here (or torch is a CPU build); use --device cpu")
    try:
        return EngineConfig(
            model=None if args.model == DEMO else args.model, adapters=adapters, device=args.device, dtype=args.dtype,
            mode=args.mode, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        )
    except ValueError as error:  # EngineConfig's own checks
        raise FairLoRAError(str(error)) from None


def _name_dir(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise FairLoRAError(f"--load takes NAME=DIR (a PEFT adapter directory), got {text!r}")
    return name, directory


def _render(tokenizer, prompt: str, raw: bool) -> str | list[int]:
    """A chat model's prompt goes through its chat template (as /v1/chat/completions does), unless --raw."""
    if raw or tokenizer is None or tokenizer.chat_template is None:
        return prompt
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens it wants


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_generate(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "generate", help=f"run prompts through the offline engine (default: {SMOLLM2} and its shipped adapters)",
        description=f"Run prompts through the offline engine, no Ray. By default the real model ({SMOLLM2}, "
        "converted once into ~/.cache/fair_lora on first use) answers each prompt under the base model and each "
        "of its shipped adapters; one JSON line per answer, then the engine's stats.",
    )
    parser.add_argument("--model", default=SMOLLM2, help=f"{SMOLLM2} (default), '{DEMO}' (the tiny random demo model: "
                        "random text, for tests), or a Hugging Face model directory (safetensors)")
    parser.add_argument("--load", action="append", default=[], metavar="NAME=DIR", help="also load this PEFT adapter "
                        "directory under NAME (repeatable)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable; default: three short questions)")
    parser.add_argument("--adapter", action="append", help="the adapter of each prompt, cycled over the prompts "
                        "(repeatable; default: every prompt under the base model and under each adapter)")
    parser.add_argument("--raw", action="store_true", help="send prompts as plain text, without the chat template")
    parser.add_argument("--mode", choices=("fair", "slora"), default="fair", help="fair: merge the popular adapter "
                        "and correct the others; slora: never merge (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights and activations (default: %(default)s)")
    parser.add_argument("--max-model-len", type=_positive, default=2048, help="longest prompt + answer in tokens; "
                        "sizes the KV cache (default: %(default)s)")
    parser.add_argument("--max-num-seqs", type=_positive, default=16, help="requests in a batch (default: %(default)s)")
    parser.add_argument("--max-tokens", type=_positive, default=32, help="tokens per answer (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature > 0)")
    parser.set_defaults(run=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fair_lora", description="Serve many LoRA adapters on one base LLM.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{demo,generate}")
    _add_demo(verbs)
    _add_generate(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except FairLoRAError as error:
        print(f"{parser.prog} {args.verb}: error: {error}", file=sys.stderr)
        return 2
