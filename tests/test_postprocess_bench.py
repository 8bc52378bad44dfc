"""The output-handling benchmark runs on the CPU and reports each mark."""
import sys

from benchmarks.engine import postprocess as postprocess_bench


def test_postprocess_bench_reports_every_mark(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["postprocess_bench", "--batch", "4", "--tokens", "60"])
    postprocess_bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("output")[1].split("tokens")[0].strip() for line in lines] == ["51", "60"]
    assert all(float(line.split("_postprocess")[1].split("ms")[0]) > 0 for line in lines)
