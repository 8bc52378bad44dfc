"""`python -m fair_lora generate`: the real model answers by default, and a user's mistake ends in one `error:` line
and exit status 2, never a traceback."""
import json
import subprocess
import sys

import pytest

from fair_lora.cli import main
from tests.serve_fixtures import REPO

pytest_plugins = ["tests.real_model_fixtures"]


@pytest.fixture
def demo_cache(tmp_path, monkeypatch, demo_root):
    monkeypatch.setenv("FAIR_LORA_DEMO_DIR", str(demo_root))


@pytest.mark.parametrize("argv, words", [
    (["--model", "demo", "--adapter", "nope"], "unknown adapter(s) nope"),
    (["--model", "demo", "--temperature", "-1"], "temperature must be"),
    (["--model", "demo", "--load", "x"], "--load takes NAME=DIR"),
    (["--model", "demo", "--device", "gpu"], "is not a device"),
    (["--model", "/nonexistent/model"], "no config.json"),
])
def test_user_mistakes_are_one_error_line(demo_cache, capsys, argv, words):
    assert main(["generate", *argv, "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert words in last and last.startswith("fair_lora generate: error:") and "Traceback" not in err, err


def test_bad_numbers_are_refused_before_anything_loads():
    done = subprocess.run([sys.executable, "-m", "fair_lora", "generate", "--max-tokens", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--max-tokens: must be a positive integer" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help wraps to the terminal
    for option in ("--model", "--load", "--prompt", "--adapter", "--raw", "--max-model-len", "--max-tokens"):
        assert option in text
    assert "SmolLM2-135M-Instruct (default)" in text and "tiny random demo model" in text


def test_the_real_model_answers_and_an_adapter_changes_it(real, capsys):
    question = "What is the capital of France?"
    assert main(["generate", "--prompt", question, "--adapter", "pirate", "--max-tokens", "12"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["adapter"] == "pirate" and line["text"].startswith("Arr matey"), line
