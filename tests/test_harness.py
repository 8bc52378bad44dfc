"""S-LoRA's experiment harness (benchmarks/common/trace.py, http_load.py, synthetic_assets.py, launch_server.py,
run_exp.py): traces drawn as S-LoRA draws them, its metrics on hand-made records, the client's parsing of the
NDJSON stream, the app args of each model setting, and one smoke run of launch_server + run_exp --debug."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# The GPU machine may have neither (its runs are engine-only): skip, not fail, collecting this module there.
aiohttp = pytest.importorskip("aiohttp")
psutil = pytest.importorskip("psutil")

from aiohttp import web  # noqa: E402 - after the skip above

from benchmarks.common.http_load import LoadRequest, RequestRecord, run_load, summarize
from benchmarks.common.synthetic_assets import adapter_names, plan_assets
from benchmarks.common.trace import PROMPT_TOKEN, TraceConfig, TraceRequest, generate_requests, prompt_token_ids

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def slora_generate_requests(num_adapters, alpha, req_rate, cv, duration, input_range, output_range, seed=42):
    """S-LoRA's benchmarks/common/trace.py generate_requests, its draws and loop as written there (global numpy state)."""
    np.random.seed(seed)
    tot_req = int(req_rate * duration)
    probs = np.random.power(alpha, tot_req)
    ind = (probs * num_adapters).astype(int)
    input_lens = np.random.randint(input_range[0], input_range[1], tot_req)
    output_lens = np.random.randint(output_range[0], output_range[1], tot_req)
    requests, tic = [], 0
    intervals = np.random.gamma(1 / (cv * cv), cv * cv / req_rate, tot_req)
    for i in range(tot_req):
        tic += intervals[i]
        requests.append((int(ind[i]), int(input_lens[i]), int(output_lens[i]), tic))
    return requests


@pytest.mark.parametrize("num_adapters, alpha, rate, cv, duration", [(5, 0.3, 2, 1, 7.5), (100, 1, 4, 2, 20)])
def test_trace_draws_equal_slora_reference(num_adapters, alpha, rate, cv, duration):
    config = TraceConfig(num_adapters, alpha, rate, cv, duration, (8, 512), (8, 512))
    ours = generate_requests(config)
    reference = slora_generate_requests(num_adapters, alpha, rate, cv, duration, (8, 512), (8, 512))
    assert len(ours) == int(rate * duration)
    assert [(r.adapter_index, r.prompt_len, r.output_len, r.req_time) for r in ours] == reference
    assert [r.req_id for r in ours] == list(range(len(ours)))


def test_trace_values_are_pinned():
    """numpy's legacy stream for seed 42 (what S-LoRA's runs drew): 10 adapters, alpha 0.5, 2 req/s, 2 s."""
    trace = generate_requests(TraceConfig(10, 0.5, 2, 1, 2, (8, 512), (8, 512)))
    assert [(r.adapter_index, r.prompt_len, r.output_len, round(r.req_time, 6)) for r in trace] == [
        (1, 110, 338, 0.459541), (9, 129, 466, 1.075166), (5, 474, 95, 1.085566), (3, 222, 380, 2.837344)]


def test_base_model_trace_has_no_adapter_and_prompts_have_the_requested_length():
    trace = generate_requests(TraceConfig(0, 1, 2, 1, 3, (8, 16), (8, 16)))
    assert len(trace) == 6 and all(r.adapter_index is None for r in trace)
    assert all(8 <= r.prompt_len < 16 and 8 <= r.output_len < 16 for r in trace)
    assert prompt_token_ids(11) == [PROMPT_TOKEN] * 11


def test_adapter_names_follow_slora_get_adapter_dirs():
    sources = ["dummy-lora-7b-rank-64", "dummy-lora-7b-rank-32", "dummy-lora-7b-rank-16", "dummy-lora-7b-rank-8"]
    names = adapter_names(sources, 6)
    assert names == [f"{s}-0" for s in sources] + ["dummy-lora-7b-rank-64-1", "dummy-lora-7b-rank-32-1"]


def test_suites_hold_the_papers_configurations_and_scale_their_duration():
    from benchmarks.harness.run_exp import configs, parse_args

    fair = [c for _, c in configs(parse_args(["--fair", "--duration-scale", "0.1"]))]
    assert len(fair) == 12 and {(c.num_adapters, c.alpha) for c in fair} == {
        (n, a) for n in (10, 50, 100) for a in (0.1, 0.2, 0.5, 1)}
    assert {(c.req_rate, c.cv, c.duration, c.input_range, c.output_range) for c in fair} == {
        (2, 1, 30.0, (8, 512), (8, 512))}
    (debug,) = configs(parse_args(["--debug"]))
    assert debug == ("debug", TraceConfig(8, 0.1, 2, 1, 30, (8, 256), (8, 256)))
    sweep = configs(parse_args(["--suite", "rate-sweep", "--alphas", "0.1", "1", "--num-adapters", "50",
                                "--lengths", "8", "128"]))
    assert [(s, c.num_adapters, c.alpha, c.input_range) for s, c in sweep] == [
        ("rate-sweep", 50, 0.1, (8, 128)), ("rate-sweep", 50, 1, (8, 128))]


# ---- metrics ----------------------------------------------------------------------------------------------


def _record(index, send, first, end, tokens, adapter="a-0", status=200, error=None, prompt=10):
    chunks = [first + (end - first) * i / (tokens - 1) for i in range(tokens)] if tokens > 1 else [first]
    return RequestRecord(index, adapter, send, status=status, prompt_tokens=prompt, output_tokens=tokens,
                         first_token_time=first, chunk_times=chunks, chunk_tokens=[1] * tokens, end_time=end,
                         finish_reason="length" if status == 200 and error is None else None, error=error)


def test_slora_metrics_match_their_definitions():
    from benchmarks.harness.run_exp import slora_result

    trace = [TraceRequest(0, 0, 10, 5, 0.0), TraceRequest(1, 0, 20, 10, 1.0), TraceRequest(2, 0, 30, 30, 2.0)]
    records = [
        _record(0, 0.0, 1.0, 3.0, 5),  # TTFT 1 s, latency 3 s
        _record(1, 1.0, 8.0, 13.0, 10),  # TTFT 7 s: past the 6 s SLO
        RequestRecord(2, "a-0", 2.0, status=429, end_time=2.1, retry_after="1", error={"message": "full"}),
    ]
    result = slora_result(trace, records, total_time=40.0, rate=0.1)
    assert result["num_abort"] == 1
    assert result["throughput"] == pytest.approx(2 / 40)
    assert result["strip_throughput"] == pytest.approx((2 - 2 * 1) / (40 - 20))  # warm-up: int(0.1 * 10) = 1
    assert result["avg_latency"] == pytest.approx((3 + 12) / 2)
    assert result["avg_per_token_latency"] == pytest.approx((3 / 15 + 12 / 30) / 2)
    assert result["avg_per_output_token_latency"] == pytest.approx((3 / 5 + 12 / 10) / 2)
    assert result["avg_first_token_latency"] == pytest.approx(4.0)
    assert result["avg_satisfaction"] == pytest.approx((1 - 1 / 36 + 0 + 0) / 3)  # the abort scores 0
    assert result["avg_attainment"] == pytest.approx(1 / 3)
    assert slora_result(trace, records, total_time=20.0, rate=0.1)["strip_throughput"] is None


def test_summary_counts_failures_and_spreads_chunk_gaps_over_their_tokens():
    ok = RequestRecord(0, "a", 0.0, status=200, prompt_tokens=4, output_tokens=4, first_token_time=0.5,
                       chunk_times=[0.5, 0.7, 1.3], chunk_tokens=[1, 1, 2], end_time=1.3, finish_reason="length")
    throttled = RequestRecord(1, "b", 0.1, status=429, end_time=0.2, retry_after="2", error={"message": "busy"})
    broken = RequestRecord(2, "b", 0.2, status=200, output_tokens=1, first_token_time=0.4, chunk_times=[0.4],
                           chunk_tokens=[1], end_time=0.5, error={"message": "worker died"})
    summary = summarize([ok, throttled, broken], total_time=2.0)
    assert (summary["completed"], summary["failed"], summary["num_429"]) == (1, 2, 1)
    assert summary["output_tokens_per_s"] == 2.0 and summary["total_tokens_per_s"] == 4.0
    assert summary["ttft_p50"] == 0.5
    # gaps 0.2 s (1 token) and 0.6 s over 2 tokens: samples 0.2, 0.3, 0.3
    assert summary["inter_token_latency_p50"] == pytest.approx(0.3)
    assert len(summary["error_samples"]) == 2


def test_completion_pace_shifts_by_the_latency_so_a_short_probe_that_keeps_up_reads_one():
    from benchmarks.harness.run_exp import completion_pace

    trace = [TraceRequest(i, 0, 8, 8, 0.1 * i) for i in range(120)]  # 10 req/s for 12 s

    def replay(latency_of):  # each request done `latency_of(i)` after it arrived
        return [_record(i, t.req_time, t.req_time + latency_of(i), t.req_time + latency_of(i), 8) for i, t in
                enumerate(trace)]

    assert completion_pace(trace, replay(lambda i: 5.0)) == pytest.approx(1.0, abs=0.03)  # 5 s each, kept up
    # Capacity 5 req/s: request i finishes when the i-th slot of a 0.2 s service comes (the queue grows).
    assert completion_pace(trace, replay(lambda i: 1.0 + 0.1 * i)) == pytest.approx(0.5, abs=0.05)


def test_sweep_probes_last_at_least_sweep_probe_s_whatever_the_scale(monkeypatch, tmp_path):
    from benchmarks.harness import run_exp

    probes = []

    def fake_run_one(server, opts, suite, config, label):  # sustained up to 8 req/s
        probes.append((config.req_rate, config.duration))
        ok = config.req_rate <= 8
        result = {"completion_pace": 1.0 if ok else 0.5, "avg_attainment": 1.0, "avg_first_token_latency": 0.1,
                  "completed": 1, "num_requests": 1, "throughput": 1.0, "output_tokens_per_s": 1.0, "num_429": 0}
        return {"config": {"req_rate": config.req_rate}, "result": result}

    monkeypatch.setattr(run_exp, "run_one", fake_run_one)
    opts = run_exp.parse_args(["--suite", "rate-sweep", "--duration-scale", "0.05", "--req-rates", "4",
                               "--sweep-refine", "1", "--sweep-probe-s", "30"])
    base = run_exp.configs(opts)[0][1]
    run_exp.sweep(None, opts, tmp_path / "sweep.jsonl", base)
    assert [rate for rate, _ in probes] == [4, 8, 16, 12]  # doubling until it fails, then one bisection
    assert all(duration >= 30 for _, duration in probes) and base.duration < 30


def test_service_over_time_credits_prompt_at_first_token_and_outputs_at_their_chunks():
    from benchmarks.harness.run_exp import service_over_time

    records = [_record(0, 0.0, 0.5, 2.5, 3, adapter="x-0", prompt=7), _record(1, 0.0, 1.2, 1.2, 1, adapter=None)]
    service = service_over_time(records, "base", bin_s=1.0)
    assert service["input_tokens"] == {"x-0": [7, 0, 0], "base": [0, 10, 0]}
    assert service["output_tokens"] == {"x-0": [1, 1, 1], "base": [0, 1, 0]}


# ---- the client against a mock /generate ------------------------------------------------------------------


async def _mock_generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["adapter"] == "busy":
        return web.json_response({"error": {"message": "queue full"}}, status=429, headers={"retry-after": "3"})
    if not body["stream"]:
        return web.json_response({"token_ids": [5, 6], "text": "ab", "finish_reason": "length", "worker": 1,
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    if body["adapter"] == "dies":
        lines = [{"token_ids": [5], "text": "a", "finished": False}, {"error": {"message": "worker failed"}}]
    else:  # the delta contract: new tokens per line, usage on the last
        lines = [{"token_ids": [5], "text": "a", "finished": False, "worker": 0, "hot_adapter": "x-0"},
                 {"token_ids": [5, 6], "text": "ab", "finished": False, "worker": 0, "hot_adapter": "x-0"},
                 {"token_ids": [], "text": "", "finished": True, "finish_reason": "length", "worker": 0,
                  "hot_adapter": "x-0", "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3}}]
    response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
    await response.prepare(request)
    for line in lines:  # one write per line, as the service streams them
        await response.write((json.dumps(line) + "\n").encode())
    await response.write_eof()
    return response


def _against_mock(**load_args) -> list[RequestRecord]:
    """run_load against _mock_generate, served on 127.0.0.1 by aiohttp for the duration of the run."""

    async def run():
        app = web.Application()
        app.router.add_post("/prefix/generate", _mock_generate)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await run_load(f"http://127.0.0.1:{port}/prefix", progress=False, **load_args)
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def test_client_records_deltas_errors_in_the_stream_and_429s():
    requests = [LoadRequest([1, 2], "x-0", 3), LoadRequest([1], "busy", 3), LoadRequest([1], "dies", 3)]
    ok, busy, dies = _against_mock(requests=requests, arrivals=[0.0, 0.01, 0.02])
    assert ok.ok and ok.token_ids == [5, 5, 6] and ok.text == "aab" and ok.chunk_tokens == [1, 2]
    assert (ok.prompt_tokens, ok.finish_reason, ok.hot_adapter, ok.worker) == (2, "length", "x-0", 0)
    assert ok.first_token_time == ok.chunk_times[0] and ok.end_time >= ok.chunk_times[-1] >= ok.send_time
    assert not busy.ok and (busy.status, busy.retry_after, busy.error) == (429, "3", {"message": "queue full"})
    assert not dies.ok and dies.error == {"message": "worker failed"} and dies.output_tokens == 1


def test_client_keeps_concurrency_in_flight_and_reads_whole_answers():
    requests = [LoadRequest([1], "x-0", 3) for _ in range(5)]
    records = _against_mock(requests=requests, concurrency=2, stream=False)
    assert [r.index for r in records] == list(range(5)) and all(r.ok for r in records)
    assert all(r.token_ids == [5, 6] and r.first_token_time is None and r.worker == 1 for r in records)
    with pytest.raises(ValueError):
        asyncio.run(run_load("http://127.0.0.1:9", requests, progress=False))


def test_client_records_a_refused_connection_as_an_error():
    records = _against_mock(requests=[LoadRequest([1], "x-0", 3)], concurrency=1)
    assert records[0].ok
    closed = asyncio.run(run_load("http://127.0.0.1:9", [LoadRequest([1], "x-0", 3)], concurrency=1, progress=False))
    assert not closed[0].ok and closed[0].status is None and "ClientConnectorError" in closed[0].error


# ---- model settings and the app args ----------------------------------------------------------------------


def test_s1_dummy_on_cuda_builds_the_app_args_without_writing_anything(tmp_path):
    from benchmarks.harness.launch_server import build_app_args, parse_args
    from deployments.app_builder import parse_args as validate

    opts = parse_args(["--model-setting", "S1", "--dummy", "--device", "cuda", "--dtype", "bfloat16",
                       "--num-replicas", "1", "--num-adapter", "100", "--num-token", "10000",
                       "--cache-dir", str(tmp_path)])
    assets = plan_assets(opts.model_setting, opts.num_adapter, tmp_path)
    args = build_app_args(opts, assets)
    app = validate(args)  # the app's own validation (deployments/app_args.py)
    names = [f"dummy-lora-7b-rank-8-{i}" for i in range(100)]
    assert list(app.adapters) == names and app.model == str(tmp_path / "models" / "llama-2-7b")
    assert all(Path(p).parent.parent == tmp_path / "adapters" and Path(p).name == n for n, p in app.adapters.items())
    assert (app.load_format, app.device, app.dtype, app.mode, app.num_kv_tokens) == (
        "dummy", "cuda", "bfloat16", "slora", 10000)
    assert (app.workers.num_replicas, app.workers.num_gpus, app.max_lora_rank) == (1, 1, 8)
    assert app.ingress_max_ongoing == 1024 + app.max_waiting == 1024 + 4096  # queues as S-LoRA does: no 503s
    assert not any(tmp_path.iterdir())  # planning writes nothing; assets.write() does
    fair = build_app_args(parse_args(["--model-setting", "S2", "--dummy", "--fair_strategy", "--num-adapter", "5",
                                      "--device", "cpu", "--scheduler", "vtc", "--fair-weights", "2", "1"]),
                          plan_assets("S2", 5, tmp_path))
    assert fair["mode"] == "fair" and fair["max_lora_rank"] == 64 and fair["scheduling_policy"] == "vtc"
    assert fair["client_weights"] == {"dummy-lora-7b-rank-64-0": 2.0, "dummy-lora-7b-rank-32-0": 1.0}
    named = parse_args(["--model-setting", "S2", "--dummy", "--device", "cpu", "--client-weights",
                        "dummy-lora-7b-rank-64-0=2"])
    assert build_app_args(named, plan_assets("S2", 5, tmp_path))["client_weights"] == {"dummy-lora-7b-rank-64-0": 2.0}
    with pytest.raises(SystemExit, match="--dummy"):
        build_app_args(parse_args(["--model-setting", "S4", "--device", "cpu"]), plan_assets("S4", 3, tmp_path))


def test_synthetic_adapters_are_written_once_and_load_in_the_engine(tmp_path):
    from fair_lora import EngineConfig, LLMEngine, SamplingParams

    config = json.loads((REPO / "configs" / "llama-2-7b.json").read_text())
    tiny = {**config, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 128}
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(tiny))
    assets = plan_assets("S2", 5, tmp_path / "cache", model=str(model))
    assets.write()
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")}
    assert len(files) == 5
    plan_assets("S2", 5, tmp_path / "cache", model=str(model)).write()  # reused, not rewritten
    assert {p: p.stat().st_mtime_ns for p in files} == files
    engine = LLMEngine(EngineConfig(model=str(model), load_format="dummy", adapters=assets.adapters,
                                    max_lora_rank=assets.max_rank, max_adapter_slots=4, mode="fair"))
    assert engine.adapters() == sorted(assets.adapters)
    outputs = engine.generate([[5, 6, 7]] * 2, ["dummy-lora-7b-rank-64-0", "dummy-lora-7b-rank-8-0"],
                              SamplingParams(max_tokens=3, ignore_eos=True))
    assert [len(o.token_ids) for o in outputs] == [3, 3]


def test_demo_copies_point_at_the_demo_adapters_cyclically(tmp_path):
    assets = plan_assets("Demo", 8, demo_dir=str(tmp_path))
    assert list(assets.adapters)[:7] == [f"adapter-{i}-0" for i in range(6)] + ["adapter-0-1"]
    assert Path(assets.adapters["adapter-0-1"]) == Path(assets.adapters["adapter-0-0"])
    assert assets.model is None and assets.demo_dir == str(tmp_path)


def test_real_setting_serves_each_adapter_directory_under_several_names(demo):
    source = demo.adapters["adapter-2"]  # rank 16 in the test demo (tests/conftest.py)
    assets = plan_assets("Real", 3, model=str(demo.model_dir), adapter_dirs=[str(source)])
    assert assets.adapters == {f"adapter-2-{i}": str(source.resolve()) for i in range(3)}
    assert (assets.model, assets.max_rank) == (str(demo.model_dir), 16)
    with pytest.raises(ValueError, match="--adapter-dir"):
        plan_assets("Real", 3, model=str(demo.model_dir))


def test_launch_server_runs_as_a_script_from_benchmarks_and_as_a_module(tmp_path):
    for cwd, command in ((BENCHMARKS, ["launch_server.py"]), (tmp_path, ["-m", "benchmarks.harness.launch_server"])):
        shown = subprocess.run([sys.executable, *command, "--help"], cwd=cwd, capture_output=True, text=True,
                               timeout=120)
        assert shown.returncode == 0 and "--fair_strategy" in shown.stdout, shown.stderr


def test_plot_exp_writes_every_plot_next_to_the_results(tmp_path):
    from benchmarks.harness.plot_exp import main

    service = {"bin_s": 1.0, "input_tokens": {"x-0": [9, 0]}, "output_tokens": {"x-0": [3, 4], "x-1": [0, 2]}}
    timeline = [{"t": 0.0, "hot": [None]}, {"t": 1.0, "hot": ["x-0"]}, {"t": 2.0, "hot": ["x-0"]}]
    records = [{"config": {"suite": suite, "mode": mode, "num_adapters": 2, "alpha": alpha, "req_rate": rate,
                           "model_setting": "Demo", "device": "cpu", "git_commit": "abc"},
                "result": {"throughput": rate / 2, "output_tokens_per_s": 10.0, "ttft_p90": 0.5, "avg_attainment": 1.0,
                           "ttfts": [0.1, 0.4, 0.5], "service": service, "hot_timeline": timeline}}
               for suite, rate in (("fair", 2), ("rate-sweep", 1), ("rate-sweep", 4))
               for mode in ("fair", "slora") for alpha in (0.1, 1)]
    results = tmp_path / "all_results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    main([str(results)])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        f"all_results_{kind}.png" for kind in ("alpha", "rate_sweep", "service", "ttft_cdf")]


# ---- the smoke run ---------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = [line for line in log.read_text().splitlines() if "ready on" in line]
        if ready:
            return ready[0]
        assert proc.poll() is None, f"launch_server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"launch_server not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


RESULT_FIELDS = {
    "total_time", "num_abort", "throughput", "strip_throughput", "avg_latency", "avg_per_token_latency",
    "avg_per_output_token_latency", "avg_first_token_latency", "avg_satisfaction", "avg_attainment",
    "num_requests", "completed", "failed", "num_429", "error_samples", "output_tokens", "output_tokens_per_s",
    "total_tokens_per_s", "ttft_p50", "ttft_p90", "ttft_p99", "inter_token_latency_p50", "inter_token_latency_p99",
    "per_token_latency_p50", "per_token_latency_p99", "short_outputs", "ttfts", "hot_timeline", "service",
    "completion_pace",
}
CONFIG_FIELDS = {
    "num_adapters", "alpha", "req_rate", "cv", "duration", "input_range", "output_range", "suite", "seed",
    "duration_scale", "num_requests", "model_setting", "mode", "server", "base_model", "max_model_len",
    "num_workers", "served_adapters", "scheduling_policy", "device", "device_names", "dtype", "server_args",
    "client_host", "python", "started_utc", "slo_s", "git_commit", "versions",
}


@pytest.mark.ray
def test_launch_server_and_run_exp_debug_complete_every_request_and_leave_no_ray_process(tmp_path):
    pytest.importorskip("ray")  # the GPU machine's Python may have none
    port, log = _free_port(), tmp_path / "server.log"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "launch_server.py", "--fair_strategy", "--num-adapter", "8", "--num-token", "4000",
               "--model-setting", "Demo", "--port", str(port), "--num-cpus", "2", "--demo-dir", str(tmp_path / "demo")]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=BENCHMARKS, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    ours: list[psutil.Process] = []
    try:
        ready = _wait_ready(proc, log, timeout_s=120)
        assert "mode fair" in ready and "8 adapters" in ready
        results = tmp_path / "results.jsonl"
        run = subprocess.run([sys.executable, "run_exp.py", "--debug", "--model-setting", "Demo", "--duration-scale",
                              "0.2", "--lengths", "8", "64", "--server", f"http://127.0.0.1:{port}", "--output",
                              str(results), "--mode", "fair"], cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        if proc.poll() is None:  # Ray's processes, while they are still the server's descendants
            ours = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the server alone
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for process in [psutil.Process(proc.pid), *ours]:
                process.kill()  # only what this test started
            raise
    assert code == 0, log.read_text()[-3000:]
    _, alive = psutil.wait_procs([p for p in ours if p.is_running()], timeout=15)
    assert not alive, f"Ray processes left behind: {[(p.pid, p.name()) for p in alive]}"

    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    config, result = record["config"], record["result"]
    assert CONFIG_FIELDS <= set(config) and RESULT_FIELDS <= set(result)
    assert (config["suite"], config["mode"], config["num_adapters"], config["duration"]) == ("debug", "fair", 8, 6.0)
    assert config["num_requests"] == 12 == result["num_requests"] == result["completed"]
    assert (result["num_abort"], result["failed"], result["num_429"], result["short_outputs"]) == (0, 0, 0, 0)
    assert result["error_samples"] == [] and len(result["ttfts"]) == 12
    for name in ("throughput", "avg_latency", "avg_first_token_latency", "ttft_p90", "inter_token_latency_p50"):
        assert result[name] > 0, name
    assert 0 < result["avg_attainment"] <= 1 and 0 < result["avg_satisfaction"] <= 1
    assert result["hot_timeline"] and all("hot" in s for s in result["hot_timeline"])
    assert sum(map(sum, result["service"]["output_tokens"].values())) == result["output_tokens"]
