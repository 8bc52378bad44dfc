"""The fused decode correction compiles for an H100 (sm_90), here on the CPU with the ptxas that Triton ships.

CI runs the kernels in Triton's interpreter, which executes their Python and never compiles them, so an error
that only compilation finds (a type a constexpr branch changes, a loop-carried value of two types) would first
show on a GPU. The fused kernel has not run on one yet: this compiles it ahead of time in each of its forms
(with and without a merged adapter; 1, 2 and 4 accumulator chains) and checks that its registers do not spill
(to the stack or local memory)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[1]
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.exists(), reason="a Triton without its ptxas")
def test_fused_correction_compiles_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), TRITON_CACHE_DIR=str(tmp_path))  # a real compile, not an earlier one's cache
    run = subprocess.run([sys.executable, "-m", "tests.kernel_compile"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    forms = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(f["has_hot"], f["chains"]) for f in forms] == [(h, c) for h in (True, False) for c in (1, 2, 4)]
    for form in forms:
        assert form["REG"] <= 255 and form["LOCAL"] == 0 and form["STACK"] == 0, form
