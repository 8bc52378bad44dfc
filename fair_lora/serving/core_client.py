"""Starts an engine-core process (serving/core_process.py) and talks to it.

Calls are answered through futures; each step's report goes to a callback; both run on one reader thread, so
the caller's threads never block on the core. The process gets the parent's import path, inherits its
environment (CUDA_VISIBLE_DEVICES included) and exits when this side closes its socket."""
import concurrent.futures
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from fair_lora.config import EngineConfig
from fair_lora.serving.core_messages import Abort, Batch, Call, Fatal, Ready, Shutdown, StepReport

logger = logging.getLogger("fair_lora")
STOP_WAIT_S = 10.0  # a core asked to stop gets this long before it is killed


class EngineDeadError(RuntimeError):
    """The engine-core process has exited; every request it held is lost and later calls fail at once."""


class EngineCoreClient:
    def __init__(
        self,
        config: EngineConfig,
        on_report: Callable[[StepReport], None],
        on_exit: Callable[[str], None] = lambda reason: None,
        torch_threads: int | None = None,
    ) -> None:
        """Starts the core; `wait_ready()` must follow. Call it from a thread that outlives the core: on Linux the
        core is killed when the thread that started it exits (so that a killed worker never leaves it running)."""
        self._on_report, self._on_exit = on_report, on_exit
        self._lock = threading.Lock()  # one writer on the socket at a time; orders calls against _die
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count()
        self.error: str | None = None
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fair_lora.serving.core_process", str(child.fileno())], pass_fds=[child.fileno()], env=env
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.ready: Ready | None = None
        self.conn.send((config, torch_threads))

    def wait_ready(self, timeout_s: float = 1800.0) -> Ready:
        """Block until the core has built its engine and warmed it up (or raise EngineDeadError why not)."""
        try:
            self.ready = self._wait_ready(timeout_s)
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._read, name="fair-lora-core-reader", daemon=True).start()
        return self.ready

    @property
    def alive(self) -> bool:
        return self.error is None

    def _wait_ready(self, timeout_s: float) -> Ready:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.conn.poll(0.5):
                    message = self.conn.recv()
                    if isinstance(message, Fatal):
                        raise EngineDeadError(f"the engine process failed to start:\n{message.error}")
                    return message
            except (EOFError, OSError):
                pass
            if self.process.poll() is not None:
                raise EngineDeadError(f"the engine process exited with code {self.process.returncode} while starting")
        raise EngineDeadError(f"the engine process did not start within {timeout_s:.0f} s")

    def call(self, method: str, *args) -> concurrent.futures.Future:
        """Run engine method `method` (core_process.CALLS) between two steps; the future holds its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.error is not None:
                future.set_exception(EngineDeadError(self.error))
                return future
            call_id = next(self._ids)
            self._pending[call_id] = future
            self._send(Call(call_id, method, args))
        return future

    def abort(self, request_id: str) -> None:
        with self._lock:
            if self.error is None:
                self._send(Abort(request_id))

    def _send(self, message) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the core is gone; the reader thread reports why and fails what is pending
            pass

    def _read(self) -> None:
        fatal = None
        try:
            while True:
                message = self.conn.recv()
                if isinstance(message, Fatal):
                    fatal = message.error
                elif isinstance(message, Batch):
                    self._deliver(message)
        except (EOFError, OSError):
            pass
        self.process.wait()
        self._die(fatal or f"the engine process exited with code {self.process.returncode}")

    def _deliver(self, batch: Batch) -> None:
        for reply in batch.replies:
            future = self._pending.pop(reply.call_id, None)
            if future is None:
                continue
            if reply.error is not None:
                future.set_exception(reply.error)
            else:
                future.set_result(reply.value)
        if batch.report is not None:
            try:
                self._on_report(batch.report)
            except Exception:  # noqa: BLE001 - a front-end bug must not stop the delivery of every later step
                logger.exception("handling an engine step report failed")

    def _die(self, reason: str) -> None:
        with self._lock:
            reason = "closed" if self.error == "closed" else reason
            self.error = reason
            pending, self._pending = self._pending, {}
        if reason != "closed":
            logger.error("the engine process stopped: %s", reason)
        for future in pending.values():
            future.set_exception(EngineDeadError(reason))
        self._on_exit(reason)

    def close(self) -> None:
        """Stop the core (it finishes its step first) and wait for it; kill it if it does not stop in time."""
        with self._lock:
            if self.error is None:
                self._send(Shutdown())
                self.error = "closed"
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()
