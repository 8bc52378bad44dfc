"""`python -m fair_lora <verb>`: one function per verb, `main` only parses and dispatches."""
import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fair_lora.demo import ARCHS, DemoSpec, default_demo_root, make_demo

DEFAULT_PROMPTS = ("Hello, world!", "The quick brown fox", "Many adapters, one model.")


def cmd_demo(args: argparse.Namespace) -> int:
    spec = DemoSpec(seed=args.seed, num_adapters=args.num_adapters, arch=args.arch)
    assets = make_demo(args.out or default_demo_root(), spec)
    adapters = {name: str(path) for name, path in assets.adapters.items()}
    print(json.dumps({"model_dir": str(assets.model_dir), "adapters": adapters}, indent=2))
    return 0


def _add_demo(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("demo", help="create (or reuse) the demo model and adapters; print their paths as JSON")
    parser.add_argument("--out", type=Path, default=None, help="root directory (default: $FAIR_LORA_DEMO_DIR "
                        "or ~/.cache/fair_lora/demo); the assets land in a subdirectory named by the spec's hash")
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    parser.add_argument("--num-adapters", type=int, default=DemoSpec.num_adapters)
    parser.add_argument("--arch", choices=ARCHS, default=DemoSpec.arch)
    parser.set_defaults(run=cmd_demo)


def cmd_generate(args: argparse.Namespace) -> int:
    from fair_lora import EngineConfig, LLMEngine, SamplingParams  # the engine import is slow; demo needs none

    adapters = dict(a.split("=", 1) for a in args.load)
    engine = LLMEngine(EngineConfig(model=args.model, adapters=adapters, device=args.device, dtype=args.dtype, mode=args.mode))
    names = args.adapter or [*engine.adapters()[:1] * 6, *engine.adapters(), None]  # skewed: the first one dominates
    prompts = args.prompt or list(DEFAULT_PROMPTS)
    pairs = [(prompts[i % len(prompts)], names[i % len(names)]) for i in range(max(len(prompts), len(names)))]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    outputs = engine.generate([p for p, _ in pairs], [a for _, a in pairs], params)
    for (prompt, _), out in zip(pairs, outputs):
        print(json.dumps({"adapter": out.adapter, "prompt": prompt, "text": out.text, "finish_reason": out.finish_reason}))
    print(json.dumps({"stats": engine.stats()}))
    return 0


def _add_generate(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("generate", help="run prompts through the offline engine (default: the demo model)")
    parser.add_argument("--model", default=None, help="a Hugging Face model directory (default: the demo model)")
    parser.add_argument("--load", action="append", default=[], metavar="NAME=DIR", help="a PEFT adapter to load")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--adapter", action="append", help="adapter of each prompt, cycled (default: a skewed mix)")
    parser.add_argument("--mode", choices=("fair", "slora"), default="fair")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.set_defaults(run=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fair_lora", description="Serve many LoRA adapters on one base LLM.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_demo(verbs)
    _add_generate(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)
