"""The serving benchmark's smoke run (CPU, the demo): the same requests through the engine and over HTTP from
the app with one worker, both complete every request with the same tokens, and the outputs hold every number."""
import json
from pathlib import Path

import pytest

from benchmarks.serving.bench import app_args, measure_engine, measure_http, parse_args, ratios
from benchmarks.serving.report import write_outputs
from benchmarks.serving.workload import Case, engine_closed_loop, requests_for
from deployments.serve_env import direct_ingress_urls
from fair_lora.demo import make_demo
from tests.serve_fixtures import deploy, undeploy

pytestmark = pytest.mark.ray
pytest_plugins = ["tests.serve_fixtures"]


def test_engine_and_http_sides_measure_the_same_requests(ray_cluster, offline_engine, tmp_path):
    opts = parse_args(["--out", str(tmp_path), "--tiny"])
    case = Case.parse("fair-0.02")
    demo = make_demo(Path(ray_cluster.demo_dir))
    adapters = sorted(demo.adapters)
    args = app_args(opts, case, None, {n: str(p) for n, p in demo.adapters.items()}, ray_cluster.demo_dir)
    workloads = {c: requests_for(case, adapters, 4, opts.prompt_len, opts.output_len) for c in (1, 4)}
    engine = measure_engine(args, case, workloads)
    app = deploy(ray_cluster, "serve_bench_app", {k: v for k, v in args.items() if k != "demo_dir"})
    try:
        direct = direct_ingress_urls("serve_bench_app")
        assert len(direct) == 1, "in Serve's throughput mode the ingress replica serves HTTP itself"
        routes = {"proxy": measure_http(app.url, case, workloads, (True, False)),
                  "direct": measure_http(f"{direct[0]}/serve_bench_app", case, workloads, (True, False), "direct")}
    finally:
        undeploy(app)
    http = routes["proxy"]
    for run in [*engine.values(), *http.values(), *routes["direct"].values()]:
        assert run["completed"] == run["num_requests"] and run["failed"] == 0, run["error_samples"]
        assert run["output_tokens"] == run["num_requests"] * opts.output_len
    assert http["4/stream"]["ttft_p50"] is not None and http["4/whole"]["ttft_p50"] is None
    got = {route: ratios(engine, runs) for route, runs in routes.items()}
    assert {"tok_s_stream_c4", "tok_s_whole_c4", "ttft_p50_c4", "first_over_later_wave"} <= set(got["direct"])
    results = {"settings": vars(opts), "cases": [{"case": case.name, "mode": case.mode, "alpha": case.alpha,
                                                  "hot_share": 1.0, "engine": engine, "http": routes, "ratios": got}]}
    paths = write_outputs(results, tmp_path)
    assert json.loads(paths["json"].read_text())["meta"]["versions"]
    md = paths["md"].read_text()
    assert "first wave / later wave" in md and "| direct |" in md and paths["png"].stat().st_size > 0


def test_the_engine_side_gives_each_request_its_tokens(offline_engine):
    case = Case.parse("slora-1")
    requests = requests_for(case, offline_engine.adapters(), 6, 10, 5)
    records, seconds = engine_closed_loop(offline_engine, requests, concurrency=2)
    assert seconds > 0 and all(r.ok and r.output_tokens == 5 and r.ttft is not None for r in records)
    assert {r.adapter for r in records} <= set(offline_engine.adapters())
