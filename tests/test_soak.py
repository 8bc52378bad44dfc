"""The soak's CI run: half a minute of mixed traffic at 80% of the demo's capacity while a worker, a worker's engine
process and the popularity tracker are killed; no request is lost and no request fails with a 5xx unless it had
streamed tokens (the soak's exit status says so), and the account, the report and the plot are written."""
import json

import pytest

pytestmark = pytest.mark.ray


@pytest.mark.background_run("benchmarks.soak", "--minutes", "0.5", timeout_s=480)  # tests/background_runs.py
def test_a_half_minute_soak_with_chaos_loses_no_request(background_run):
    done, out = background_run, background_run.out  # started with the session, beside the other tests
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "soak.json").read_text())
    assert summary["account"]["lost"] == 0 and summary["account"]["answered"] > 0
    assert {e["fault"] for e in summary["faults"]} == {"worker", "engine", "tracker"}
    assert (out / "soak.png").stat().st_size and (out / "soak.md").exists()
