"""The end-to-end benchmark runs in tiny mode on the CPU and writes every field the GPU run writes."""
import json

import pytest

from benchmarks.e2e.bench import main
from benchmarks.e2e.report import RATIO_KEYS

PASS_FIELDS = ("wall_s", "output_tokens", "tokens_per_s", "ttft_ms", "per_token_ms", "decode_step_ms", "hot_share",
               "switches", "triton_compiles", "graphs_captured", "adapters_made_resident", "errors")
STARTUP_FIELDS = ("seconds", "constructor_s", "add_adapters_s", "warmup_s", "triton_compiles", "graphs_captured",
                  "memory_plan")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    files = main(["--tiny", "--hot-shares", "0.98,0.8", "--out", str(tmp_path_factory.mktemp("e2e"))])
    return files, json.loads(files["json"].read_text())


def test_tiny_run_writes_json_markdown_and_plot(run):
    files, _ = run
    assert set(files) == {"json", "md", "png"}
    for path in files.values():
        assert path.name.startswith("e2e_") and path.stem.endswith("_cpu-tiny") and path.stat().st_size > 0
    assert "## Targets" in files["md"].read_text()


def test_every_mode_alpha_and_length_workload_runs_in_its_own_engine(run):
    _, results = run
    assert not results["notes"], results["notes"]
    ran = {(c["mode"], c["alpha"], c["lengths"]) for c in results["configs"] if c["hot_share"] is None}
    fixed = {("base", None, "fixed")} | {(m, a, "fixed") for m in ("fair", "slora") for a in (0.02, 1.0)}
    mix = {("base", None, "mix"), ("fair", 0.02, "mix"), ("slora", 0.02, "mix")}
    assert ran == fixed | mix
    assert results["meta"]["date"] and results["meta"]["device_name"] == "cpu" and results["meta"]["versions"]


def test_each_configuration_has_startup_cold_and_warm_passes_with_percentiles(run):
    _, results = run
    for c in results["configs"]:
        assert all(k in c["startup"] for k in STARTUP_FIELDS)
        assert set(c["passes"]) == {"cold", "warm"}
        for p in c["passes"].values():
            assert all(k in p for k in PASS_FIELDS)
            assert p["errors"] == 0 and p["output_tokens"] == p["expected_output_tokens"] > 0
            for latency in (p["ttft_ms"], p["per_token_ms"]):
                assert set(latency) == {"p50", "p90", "p99"}
                assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert c["cold_over_warm"] > 0
        assert "busy" in c["gpu_busy_decode"]


def test_fair_merges_the_skewed_adapter_and_slora_never_merges(run):
    _, results = run
    by = {(c["mode"], c["alpha"], c["lengths"]): c for c in results["configs"]}
    fair = by[("fair", 0.02, "fixed")]["passes"]
    assert fair["cold"]["switches"] >= 1 and fair["warm"]["hot_share"] > 0.5
    for mode, alpha in (("slora", 0.02), ("slora", 1.0), ("base", None)):
        assert by[(mode, alpha, "fixed")]["passes"]["warm"]["hot_share"] == 0.0


def test_the_hot_share_sweep_draws_each_share_and_reports_its_distinct_adapters(run):
    _, results = run
    sweep = {(c["mode"], c["hot_share"]): c["workload"] for c in results["configs"] if c["hot_share"] is not None}
    assert set(sweep) == {(m, s) for m in ("fair", "slora") for s in (0.98, 0.8)}
    for (_, share), workload in sweep.items():
        assert abs(workload["top_adapter_share"] - share) <= 0.25, "12 requests: the share is drawn, not exact"
        assert workload["distinct_adapters"] >= 1
    assert sweep[("fair", 0.98)]["top_adapter_share"] >= sweep[("fair", 0.8)]["top_adapter_share"]


def test_ratios_and_targets_carry_the_ratio_keys(run):
    _, results = run
    assert tuple(results["ratios"]) == RATIO_KEYS
    assert all(results["ratios"][k] is not None for k in RATIO_KEYS if k != "gpu_busy_decode")
    assert set(results["targets"]) == set(RATIO_KEYS)
    for key, t in results["targets"].items():
        assert t["value"] == results["ratios"][key]
        assert t["goal"].startswith(">= ") and t["status"] in ("met", "missed", "not measured")
        assert t["met"] is (None if t["value"] is None else t["value"] >= float(t["goal"][3:]))
