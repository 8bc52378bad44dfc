"""Benchmark smoke runs that the suite starts beside the other tests rather than after them.

A test marked `@pytest.mark.background_run("benchmarks.soak", "--minutes", "0.5", timeout_s=480)` checks what
`python -m benchmarks.soak --minutes 0.5 --out DIR` left in DIR (an argument "{port}" becomes a free port).
Each such run is a subprocess with a Ray cluster of its own; the selected ones start, one after another on a
thread, as soon as the session has collected, and their tests move to the end of the session, where they wait
for their run and assert on it. On a 2-core machine the engine tests keep one core busy (tests/conftest.py
gives torch one thread) and a run of the demo app mostly the other, so the runs cost the suite little of their
own time. The runs serve Ray apps: without ray installed none starts (their tests skip). Loaded as a plugin by
tests/conftest.py.
"""
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "background_run"
STOP_TIMEOUT_S = 120.0  # what a run gets to stop its Ray cluster after Ctrl-C when the session ends first


@dataclass
class BackgroundRun:
    module: str  # run as `python -m module *args --out DIR`
    args: tuple[str, ...]
    timeout_s: float
    out: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fair_lora_background_")))
    done: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float | None = None  # its wall time, once done

    def command(self) -> list[str]:
        args = [str(_free_port()) if arg == "{port}" else arg for arg in self.args]
        return [sys.executable, "-m", self.module, *args, "--out", str(self.out)]

    def run(self, cancelled: threading.Event) -> None:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
        try:
            if cancelled.is_set():
                return
            started = time.monotonic()
            self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                self.stdout, self.stderr = self.proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                self.stop()
                self.stdout, self.stderr = self.proc.communicate()
                self.stderr += f"\n[background_runs] timed out after {self.timeout_s:.0f} s"
            self.returncode, self.seconds = self.proc.returncode, time.monotonic() - started
        finally:
            self.done.set()

    def stop(self) -> None:
        """Ctrl-C, as a user stops it (its Ray cluster goes down with it); then SIGKILL to its process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this plugin started, and nothing else

    def wait(self) -> "BackgroundRun":
        self.done.wait()
        return self


class BackgroundRuns:
    def __init__(self) -> None:
        self.runs: dict[str, BackgroundRun] = {}  # by the node id of the test that checks it
        self.cancelled = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, items: list[pytest.Item]) -> None:
        if importlib.util.find_spec("ray") is None:
            return
        for item in items:
            marker = item.get_closest_marker(MARKER)
            if marker is not None:
                module, *args = marker.args
                self.runs[item.nodeid] = BackgroundRun(module, tuple(args), marker.kwargs["timeout_s"])
        if self.runs:
            runs = list(self.runs.values())
            self.thread = threading.Thread(target=lambda: [r.run(self.cancelled) for r in runs], daemon=True)
            self.thread.start()

    def finish(self) -> None:
        self.cancelled.set()
        for run in self.runs.values():
            run.stop()
        if self.thread is not None:
            self.thread.join(STOP_TIMEOUT_S)
        for run in self.runs.values():
            shutil.rmtree(run.out, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_runs = BackgroundRuns()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(module, *args, timeout_s): a smoke run started at collection "
                                       "(tests/background_runs.py)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker(MARKER) is not None)  # stable: the rest keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly:
        _runs.start([item for item in session.items if "skip" not in item.keywords])


def pytest_sessionfinish(session: pytest.Session) -> None:
    _runs.finish()


def pytest_terminal_summary(terminalreporter) -> None:
    timed = [(run.module, run.seconds) for run in _runs.runs.values() if run.seconds is not None]
    if timed:
        terminalreporter.write_line("background runs: " + ", ".join(f"{m} {s:.0f} s" for m, s in timed))


@pytest.fixture
def background_run(request: pytest.FixtureRequest) -> BackgroundRun:
    """The finished run of this test's `background_run` marker."""
    run = _runs.runs.get(request.node.nodeid)
    if run is None:
        pytest.skip("the run needs ray")
    return run.wait()
