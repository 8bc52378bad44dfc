"""The soak's CI run: a minute of mixed traffic at 80% of the demo's capacity while a worker, a worker's engine
process and the popularity tracker are killed; no request is lost and no request fails with a 5xx unless it had
streamed tokens (the soak's exit status says so), and the account, the report and the plot are written."""
import json
import os
import subprocess
import sys

import pytest

from tests.serve_fixtures import REPO

pytestmark = pytest.mark.ray


def test_a_one_minute_soak_with_chaos_loses_no_request(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--minutes", "1", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["account"]["lost"] == 0 and summary["account"]["answered"] > 0
    assert {e["fault"] for e in summary["faults"]} == {"worker", "engine", "tracker"}
    assert (tmp_path / "soak.png").stat().st_size and (tmp_path / "soak.md").exists()
