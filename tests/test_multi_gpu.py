"""The multi-GPU benchmark: its traffic and what it reads off a run (fast), and its CPU dry run (Ray): the demo
on one and two CPU workers, with the hot-adapter router and Serve's default one."""
import json
from collections import Counter

import pytest

from benchmarks.common.http_load import RequestRecord
from benchmarks.common.trace import TraceConfig, generate_requests
from benchmarks.multi_gpu.report import ratios
from benchmarks.multi_gpu.workload import (
    hot_indices, merged_after, merged_timeline, routing_hits, scenario_trace, switches_per_worker,
)


def _shares(trace, since=0.0, until=float("inf")):
    picked = Counter(r.adapter_index for r in trace if since <= r.req_time < until)
    total = sum(picked.values())
    return {i: n / total for i, n in picked.items()}


def test_two_hot_puts_45_percent_on_each_of_two_adapters_and_spreads_the_rest():
    trace = scenario_trace("two-hot", 100, rate=50, duration=200, lengths=(8, 512), seed=42)
    shares = _shares(trace)
    assert len(trace) == 10_000
    assert shares[0] == pytest.approx(0.45, abs=0.02) and shares[1] == pytest.approx(0.45, abs=0.02)
    rest = {i: s for i, s in shares.items() if i > 1}
    assert sum(rest.values()) == pytest.approx(0.10, abs=0.02) and max(rest.values()) < 0.01 and len(rest) > 90


def test_shift_moves_the_hot_adapter_halfway_and_keeps_the_power_law_traces_arrivals():
    trace = scenario_trace("shift", 50, rate=40, duration=100, lengths=(8, 64), seed=7)
    first, second = _shares(trace, until=50), _shares(trace, since=50)
    assert hot_indices("shift") == (2, 3)  # not the two-hot scenario's, left merged on the same deployment
    assert first[2] == pytest.approx(0.9, abs=0.03) and 3 not in first
    assert second[3] == pytest.approx(0.9, abs=0.03) and 2 not in second
    uniform = generate_requests(TraceConfig(50, 1.0, 40, 1.0, 100, (8, 64), (8, 64)), 7)
    assert [(r.req_time, r.prompt_len, r.output_len) for r in trace] == \
           [(r.req_time, r.prompt_len, r.output_len) for r in uniform]
    assert scenario_trace("alpha0.02", 50, 40, 100, (8, 64), 7) == \
           generate_requests(TraceConfig(50, 0.02, 40, 1.0, 100, (8, 64), (8, 64)), 7)


def _record(adapter, sent, hot, ok=True, worker=0):
    return RequestRecord(index=0, adapter=adapter, send_time=sent, status=200 if ok else 503,
                         finish_reason="length" if ok else None, worker=worker, hot_adapter=hot)


TIMELINE = [
    {"t": 0.0, "hot": [None, None], "switches": [0, 0]},
    {"t": 1.0, "hot": ["a", None], "switches": [1, 0]},
    {"t": 2.0, "error": "ReadTimeout"},
    {"t": 3.0, "hot": ["a", "b"], "switches": [1, 1]},
    {"t": 4.0, "hot": ["a", "b"], "switches": [1, 1]},
    {"t": 5.0, "hot": ["c", "b"], "switches": [2, 1]},
]


def test_routing_hits_count_only_requests_whose_adapter_was_merged_around_their_sending():
    records = [
        _record("a", 1.5, "a"),  # a merged at 1 and 3: eligible, hit
        _record("a", 3.5, None, worker=1),  # eligible, missed (landed where nothing of it was merged)
        _record("b", 2.5, "b", worker=1),  # b not merged yet at 1: not eligible
        _record("a", 4.5, "a"),  # a gone at 5: not eligible
        _record("b", 3.2, "b", ok=False),  # failed: not counted
        _record(None, 3.5, "a"),  # the base model: not counted
    ]
    assert routing_hits(records, TIMELINE) == {"eligible": 2, "hits": 1, "hit_rate": 0.5}
    assert routing_hits(records, TIMELINE, since_s=3.0) == {"eligible": 1, "hits": 0, "hit_rate": 0.0}
    assert routing_hits([], TIMELINE)["hit_rate"] is None


def test_timeline_readings_merged_per_worker_switches_and_time_to_merge():
    assert merged_timeline(TIMELINE) == [[(0.0, None), (1.0, "a"), (5.0, "c")], [(0.0, None), (3.0, "b")]]
    assert switches_per_worker(TIMELINE) == [2, 1]
    assert merged_after(TIMELINE, "b", 0.5) == 2.5 and merged_after(TIMELINE, "c", 4.2) == pytest.approx(0.8)
    assert merged_after(TIMELINE, "z", 0.0) is None


def _line(k, router, scenario, tok_s, hit=None, shift_s=None):
    return {"config": {"gpus": k, "router": router, "scenario": scenario, "popularity_window_s": 30.0},
            "result": {"output_tokens_per_s": tok_s, "routing": {"hit_rate": hit}, "shift_merged_after_s": shift_s}}


def test_ratios_compare_the_right_runs():
    records = [_line(1, "hot_adapter", "two-hot", 1000), _line(2, "hot_adapter", "two-hot", 2100, hit=0.97),
               _line(2, "default", "two-hot", 1500, hit=0.5), _line(2, "hot_adapter", "alpha0.02", 3000, hit=0.93),
               _line(2, "hot_adapter", "shift", 1800, hit=0.99, shift_s=12.0),
               _line(1, "hot_adapter", "shift", 900, shift_s=45.0)]
    r = ratios(records)
    assert r["scaling_K2"] == pytest.approx(2.1) and r["scaling_K4"] is None
    assert r["router_gain_K2"] == pytest.approx(1.4)
    assert r["routing_hit_rate"] == pytest.approx(0.93)  # the default router's and the shift's are not steady state
    assert r["shift_merge_over_window"] == pytest.approx(1.5)
    records.append(_line(4, "hot_adapter", "shift", 2000, shift_s=None))
    assert ratios(records)["shift_merge_over_window"] == float("inf")


@pytest.mark.ray
@pytest.mark.background_run("benchmarks.multi_gpu.bench", "--dry-run", "--port", "{port}", timeout_s=600)
def test_dry_run_serves_every_request_on_one_and_two_cpu_workers_with_both_routers(background_run):
    run = background_run  # started with the session, beside the other tests (tests/background_runs.py)
    assert run.returncode == 0, run.stderr[-4000:]
    (jsonl,) = run.out.glob("multi_gpu_*_cpu-dry-run.jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    runs = {(r["config"]["gpus"], r["config"]["router"], r["config"]["scenario"]): r for r in records}
    assert set(runs) == {(k, router, s) for k, router in ((1, "hot_adapter"), (2, "hot_adapter"), (2, "default"))
                         for s in ("two-hot", "shift")}
    for (k, router, scenario), record in runs.items():
        config, result = record["config"], record["result"]
        assert config["num_workers"] == k and config["server_args"]["routing"]["router"] == router
        assert result["completed"] == result["num_requests"] == config["num_requests"] > 0
        assert (result["failed"], result["num_429"]) == (0, 0)
        assert len(result["merged"]) == k and len(result["switches"]) == k
        assert result["output_tokens_per_s"] > 0
    # Two workers with the hot-adapter router: the two 45% adapters each get a worker of their own, and
    # their requests go there.
    two = runs[2, "hot_adapter", "two-hot"]["result"]
    merged_last = {changes[-1][1] for changes in two["merged"]}
    assert merged_last == set(runs[2, "hot_adapter", "two-hot"]["config"]["adapters"])
    assert two["routing"]["eligible"] > 0 and two["routing"]["hit_rate"] >= 0.9
    assert sorted(map(int, two["worker_requests"])) == [0, 1]
    # After the shift, the new hot adapter is merged somewhere before the trace ends.
    assert runs[2, "hot_adapter", "shift"]["result"]["shift_merged_after_s"] is not None
    summary = json.loads(jsonl.with_suffix(".json").read_text())
    assert summary["targets"]["router_gain_K2"]["value"] is not None
    assert jsonl.with_suffix(".md").read_text().count("| 2 | hot_adapter |") == 2
    assert jsonl.with_suffix(".png").stat().st_size > 10_000
