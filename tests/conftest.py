import importlib.util
import os
from pathlib import Path

import pytest
import torch

from fair_lora.demo import DemoSpec, make_demo

# One thread: the test models are tiny, and on a small shared machine (the suite's own Ray workers beside it, or
# another job) a second thread mostly waits at OpenMP's barriers for a core: with two threads and two busy cores,
# test_async_scheduling took 7 s instead of 2.5 s, and in a full run beside other work up to 50x its time alone.
torch.set_num_threads(1)

pytest_plugins = ["tests.background_runs"]  # the long smoke runs, started beside the other tests

# The Serve app's tests need ray and the HTTP clients; the GPU machine has none of them, and its runs are engine-only.
NEEDS_RAY = ["test_serve_*.py", "test_call_stream.py", "test_launch_server_real.py", "test_soak.py"]
NEEDS_CLIENTS = [*NEEDS_RAY, "test_http_validation.py", "test_cli_generate.py"]
collect_ignore_glob = [] if importlib.util.find_spec("ray") else list(NEEDS_RAY)
if importlib.util.find_spec("openai") is None:
    collect_ignore_glob += NEEDS_CLIENTS

# Mixed ranks (4, 8, 16), different alphas, one adapter with rsLoRA, one targeting only q/v (DemoSpec default).
SPEC = DemoSpec(seed=0, num_adapters=6, use_rslora_every=3)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo(demo_root):
    return make_demo(demo_root, SPEC)


@pytest.fixture(scope="session")
def oracle(demo):
    from tests.hf_oracle import HFOracle

    return HFOracle(demo.model_dir, demo.adapters)


@pytest.fixture
def small_grids(monkeypatch):
    """Correction kernels on grids sized for the work rather than for an H100. Triton's interpreter runs every
    program of a grid in Python, and the GPU sizes (512 shrink programs, 256 expand ones, most of them exiting at
    once) cost seconds per call; the kernels cut their work from the grid they get (more K splits, or more column
    blocks per program, on a bigger one), so a smaller grid computes the same sums. The kernels' own tests keep the
    GPU sizes where the cut is what they check (test_kernels_lora.py: the split of wide inputs, the expand)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from fair_lora.kernels.lora import expand, shrink

    monkeypatch.setattr(shrink, "BUSY_GRID", 16)
    monkeypatch.setattr(expand, "MIN_GRID", 4)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
