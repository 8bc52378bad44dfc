"""What every benchmark's report shares: where the repository and the results are, which code and packages ran
on which device, the results' file names (`<bench>_<YYYY-MM-DD>_<device>.{json,md,png}`) and their writing."""
import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def git_commit() -> str:
    """The checkout's commit, `-dirty` when it has changes; "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    """Package versions, and which fair_lora code ran: git (when the checkout has it) and a hash of the sources."""
    import torch

    sources = hashlib.sha1()
    for path in sorted((REPO / "fair_lora").rglob("*.py")):
        sources.update(path.read_bytes())
    return {
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "peft": package_version("peft"),
        "numpy": package_version("numpy"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git": git_commit(),
        "fair_lora_sources": sources.hexdigest()[:12],
    }


def run_meta(device_name: str) -> dict:
    """The fields every result's `meta` starts with."""
    return {
        "date": datetime.date.today().isoformat(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name, "command": sys.argv, "versions": versions(),
        # The switches that change which kernels run (fair_lora/kernels/): an A/B's two runs differ only here.
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("FAIR_LORA_")},
    }


def device_slug(device_name: str) -> str:
    """One spelling per device in file names: "NVIDIA H200" -> "nvidia-h200"."""
    return "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")


def output_stem(bench: str, date: str, device_name: str, tiny: bool = False) -> str:
    return f"{bench}_{date}_{device_slug(device_name)}{'-tiny' if tiny else ''}"


def write_files(
    out: Path, stem: str, results: dict, markdown: str, plot: Callable[[Path], bool | None] | None = None,
    note: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> dict[str, Path]:
    """<stem>.json and <stem>.md, and <stem>.png when `plot` draws it (it returns False when it has nothing to
    draw); a machine without matplotlib still gets the JSON and the markdown."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / f"{stem}.{kind}" for kind in ("json", "md", "png")}
    files["json"].write_text(json.dumps(results, indent=1))
    files["md"].write_text(markdown)
    try:
        drawn = plot is not None and plot(files["png"]) is not False
    except ImportError as e:
        note(f"no plot: {e}")
        drawn = False
    if not drawn:
        del files["png"]
    return files


def figure(**kwargs):
    """A matplotlib Figure without pyplot: no global backend or figure state; savefig renders with Agg."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)
