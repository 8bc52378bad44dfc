"""The live replicas' metrics as the ingress's GET /metrics renders them: Prometheus's text format, cumulative
histogram buckets, each replica's series labelled with it, label values escaped."""
import re

import pytest

pytest.importorskip("ray")  # the deployments package imports Ray; the GPU machine's Python may have none

from deployments.live_metrics import LiveMetrics, render  # noqa: E402


def _replica(requests: float, latencies: list[float]) -> LiveMetrics:
    m = LiveMetrics()
    m.family("fair_lora_requests", "counter", "Requests finished")
    m.family("fair_lora_queue_waiting", "gauge", "Waiting")
    m.family("fair_lora_request_latency_seconds", "histogram", "Latency", (0.1, 1.0))
    m.inc("fair_lora_requests", requests, {"adapter": 'a"b\\c', "worker": "0"})
    m.set("fair_lora_queue_waiting", 3, {"worker": "0"})
    m.set("fair_lora_queue_waiting", 2, {"worker": "0"})  # a gauge keeps the last value
    for seconds in latencies:
        m.observe("fair_lora_request_latency_seconds", seconds, {"worker": "0"})
    return m


def test_render_gives_prometheus_text_with_cumulative_buckets_and_replica_labels():
    text = render([({"replica": "r1"}, _replica(2, [0.05, 0.5, 0.7, 5.0])), ({"replica": "r2"}, _replica(1, []))])
    lines = text.splitlines()
    assert "# TYPE fair_lora_requests counter" in lines and "# TYPE fair_lora_request_latency_seconds histogram" in lines
    assert 'fair_lora_requests_total{adapter="a\\"b\\\\c",replica="r1",worker="0"} 2.0' in lines
    assert 'fair_lora_requests_total{adapter="a\\"b\\\\c",replica="r2",worker="0"} 1.0' in lines
    assert 'fair_lora_queue_waiting{replica="r1",worker="0"} 2.0' in lines
    buckets = [line for line in lines if line.startswith("fair_lora_request_latency_seconds_bucket") and "r1" in line]
    assert [line.rsplit(" ", 1)[1] for line in buckets] == ["1", "3", "4"]  # <=0.1, <=1, +Inf: cumulative
    assert 'le="+Inf"' in buckets[-1]
    assert 'fair_lora_request_latency_seconds_sum{replica="r1",worker="0"} 6.25' in lines
    assert 'fair_lora_request_latency_seconds_count{replica="r1",worker="0"} 4' in lines
    assert text.count("# HELP fair_lora_requests ") == 1, "one header per family, however many replicas"
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? \S+$')
    assert all(sample.match(line) for line in lines if not line.startswith("#")), text
