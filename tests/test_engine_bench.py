"""The engine benchmark runs end to end in tiny mode on the CPU and writes what the GPU run will write."""
import json

import pytest

from benchmarks.common.report import REPO
from benchmarks.engine.bench import main
from benchmarks.engine.roofline import ModelShape, correction
from benchmarks.engine.workload import Mix, most_frequent

TARGET_ROWS = (
    "decode: fair, every token hot, step time vs base",
    "decode: % of step roofline",
    "decode: fair vs slora speed-up, ≥ 90% of tokens hot",
    "decode: fair vs slora speed-up at α = 1",
    "prefill: one hot request vs base",
    "prefill: one cold request vs base",
    "merge switch",
    "restore bit-exact",
    "decode: fair vs hf-peft tokens/s",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    files = main(["--tiny", "--out", str(tmp_path_factory.mktemp("bench"))])
    return files, json.loads(files["json"].read_text()), files["md"].read_text()


def test_tiny_run_writes_json_markdown_and_plot(run):
    files, _, _ = run
    assert set(files) == {"json", "md", "png"}
    for path in files.values():
        assert path.name.startswith("engine_bench_") and path.stem.endswith("_cpu-tiny") and path.stat().st_size > 0


def test_every_mode_batch_and_mix_is_measured_without_errors(run):
    _, results, _ = run
    assert not [r for r in results["decode"] + results["prefill"] if "error" in r], results["notes"]
    measured = {(r["mode"], r["adapter_set"], r["batch"], r["mix"]) for r in results["decode"]}
    mixes = ("all-hot", "alpha=0.1", "alpha=1", "all-distinct")
    expected = {("base", None, b, None) for b in (1, 4)}
    expected |= {(m, "r4", b, mix) for m in ("fair", "slora") for b in (1, 4) for mix in mixes}
    expected |= {("hf-peft", "r4", b, mix) for b in (1, 4) for mix in mixes}
    expected |= {(m, "r2-8", 4, mix) for m in ("fair", "slora") for mix in ("all-hot", "alpha=1")}
    assert measured == expected
    assert {p["case"] for p in results["prefill"]} == {"base", "slora", "fair-hot", "fair-cold"}


def test_each_record_carries_its_time_throughput_and_roofline(run):
    _, results, _ = run
    for r in results["decode"]:
        assert 0 < r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
        assert r["tokens_per_s"] == pytest.approx(1000 * r["batch"] / r["step_ms"])
        assert r["roofline_ms"] > 0 and r["roofline_pct"] == pytest.approx(100 * r["roofline_ms"] / r["step_ms"])
    calibration = results["calibration"]
    assert calibration["matmul_tflops"] > 0 and calibration["copy_gbps"] > 0


def test_fair_corrects_only_cold_tokens_and_slora_corrects_every_adapter_token(run):
    _, results, _ = run
    for r in results["decode"]:
        if r["mode"] == "base" or (r["mode"] == "fair" and r["mix"] == "all-hot"):
            assert r["corrected_tokens"] == 0
        elif r["mode"] == "slora" or (r["mode"] == "fair" and r["hot"] is None):
            assert r["corrected_tokens"] == r["batch"]  # fair merges nothing below the enter share
        elif r["mode"] == "fair":
            assert r["hot_share"] >= 0.5
            assert r["corrected_tokens"] == round(r["batch"] * (1 - r["hot_share"]))


def test_compared_modes_are_timed_in_turns(run):
    _, results, _ = run
    engine = [r for r in results["decode"] if r["mode"] in ("fair", "slora")]
    assert engine and all(r["timed_with"] == [{"fair": "slora", "slora": "fair"}[r["mode"]]] for r in engine)
    base = [r for r in results["decode"] if r["mode"] == "base"]
    assert base and all(r["partner"]["mode"] == "fair" and r["partner"]["mix"] == "all-hot" for r in base)
    assert all(r["partner"]["corrected_tokens"] == 0 and r["partner"]["step_ms"] > 0 for r in base)
    hot_vs_base = next(t for t in results["targets"] if t["target"].startswith("decode: fair, every token hot"))
    ratio = max(r["partner"]["step_ms"] / r["step_ms"] for r in base)
    assert hot_vs_base["reached"] == f"{ratio:.3f}×"


def test_interleave_times_each_run_in_turns_after_warming_all_up():
    from benchmarks.engine.measure import interleave

    order = []

    class FakeRun:
        def __init__(self, name):
            self.name, self.engine, self.seconds = name, object(), []

        def step(self, timed):
            order.append(self.name if timed else self.name.lower())
            if timed:
                self.seconds.append(0.001)

        def timing(self):
            return len(self.seconds)

    assert interleave([FakeRun("A"), FakeRun("B")], warmup=1, steps=5, turn=2) == [5, 5]
    assert "".join(order) == "abAABBAABBAB"


def test_engines_that_do_not_fit_together_run_one_after_the_other(tmp_path, monkeypatch):
    import torch

    import benchmarks.engine.measure as engine_measure

    make_engine = engine_measure.make_engine

    def second_engine_out_of_memory(s, mode, ranks, graphs, adapters=None):
        if adapters is not None:  # the second engine of a set shares the first one's adapters
            raise torch.OutOfMemoryError("simulated: the second engine does not fit")
        return make_engine(s, mode, ranks, graphs)

    monkeypatch.setattr(engine_measure, "make_engine", second_engine_out_of_memory)
    args = ["--tiny", "--out", str(tmp_path), "--modes", "base,fair,slora", "--adapter-sets", "uniform"]
    results = json.loads(main(args)["json"].read_text())
    assert any("did not fit on the device together" in n for n in results["notes"])
    decode = [r for r in results["decode"] if "error" not in r]
    assert {r["mode"] for r in decode} == {"base", "fair", "slora"} and len(decode) == len(results["decode"])
    assert not any("partner" in r or r.get("timed_with") for r in decode)  # each mode ran alone
    keys = [(r["mode"], r["batch"], r["mix"]) for r in decode]
    assert len(keys) == len(set(keys))
    hot_vs_base = next(t for t in results["targets"] if t["target"].startswith("decode: fair, every token hot"))
    fair = {r["batch"]: r["step_ms"] for r in decode if r["mode"] == "fair" and r["mix"] == "all-hot"}
    ratio = max(fair[r["batch"]] / r["step_ms"] for r in decode if r["mode"] == "base")
    assert hot_vs_base["reached"] == f"{ratio:.3f}×"


def test_merge_restores_the_loaded_weights_bit_for_bit(run):
    _, results, _ = run
    merge = results["merge"]
    assert merge["projections"] == 14 and merge["bit_exact"] and merge["merged_differs"]
    assert merge["switches_timed"] == 4 and merge["switch_ms"] > 0


def test_markdown_reports_versions_targets_and_tables(run):
    _, results, md = run
    names = [t["target"] for t in results["targets"]]
    assert all(any(name.startswith(row) for name in names) for row in TARGET_ROWS), names
    for text in (*TARGET_ROWS, "torch 2", "transformers", "peft", "TFLOP/s", "| B | mix |", "## Prefill", "## Hot"):
        assert text in md, text
    assert results["meta"]["hf_peft_method"] == "mixed" and "adapter_names" in md


def test_power_law_mix_is_skewed_like_s_lora():
    # S-LoRA's power law with N = 100: the top adapter's share is about (1/N)^alpha.
    for alpha, share in ((0.1, 0.63), (0.2, 0.40), (0.5, 0.10)):
        top, measured = most_frequent(Mix(f"alpha={alpha:g}", alpha).adapters(20000, 100))
        assert top == 0 and measured == pytest.approx(share, abs=0.02)
    assert most_frequent(Mix("alpha=1", 1.0).adapters(20000, 100))[1] < 0.02  # alpha = 1 is uniform
    assert Mix("all-distinct").adapters(5, 3) == [0, 1, 2, 0, 1]


def test_roofline_counts_llama_2_7b_and_the_adapters_the_correction_touches():
    config = json.loads((REPO / "configs" / "llama-2-7b.json").read_text())
    shape = ModelShape.from_config(config, dtype_bytes=2)
    assert shape.weight_bytes == pytest.approx(13.2e9, rel=0.01)
    assert shape.adapter_params(16) * 2 == pytest.approx(80e6, rel=0.01)  # rank 16 on all 224 projections
    assert correction([0, 0, 1, None], hot=0) == ([1, 0, 0], {0, 1})
    assert correction([0, 0, 1, None], hot=None) == ([0, 0, 1], {0, 1})


def test_peft_baseline_serves_a_mixed_batch_both_ways(tmp_path):
    import torch

    from benchmarks.engine.hf_peft_baseline import PeftBaseline
    from benchmarks.engine.plan import TINY_CONFIG

    config = {**json.loads((REPO / "configs" / "llama-2-7b.json").read_text()), **TINY_CONFIG}
    (tmp_path / "config.json").write_text(json.dumps(config))
    baseline = PeftBaseline(tmp_path, (4, 4, 8), "cpu", torch.float32)
    assert sorted(baseline.model.peft_config) == ["a000", "a001", "a002"]  # a001 cloned from a000, a002 added by PEFT
    for method in ("mixed", "subbatch"):
        seconds, contexts = baseline.decode([0, 1, 2, None, 0], 8, 1, 2, method, torch.Generator().manual_seed(0))
        assert len(seconds) == 2 and contexts == [11] * 5
