"""`python -m fair_lora <verb>`: one function per verb, `main` only parses and dispatches."""
import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from fair_lora.demo import ARCHS, DemoSpec, default_demo_root, make_demo


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fair_lora", description="Serve many LoRA adapters on one base LLM.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_demo(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)
