"""One thread owns the engine (it is not thread-safe): it runs queued commands between steps and steps while
any request is unfinished, handing each request's outputs to the asyncio queue of the coroutine that asked."""
import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from fair_lora import LLMEngine, RequestOutput

logger = logging.getLogger("ray.serve")
IDLE_WAIT_S = 0.5  # how long an idle loop sleeps on the command queue before checking for shutdown
STALL_WAIT_S = 0.002  # a step that scheduled nothing (every request waits for memory) retries after this


class EngineLoopDead(RuntimeError):
    """The engine thread stopped after an unexpected error; the replica must be replaced."""


@dataclass
class _Command:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class EngineLoop:
    def __init__(self, engine: LLMEngine, after_step: Callable[[list[RequestOutput]], None]) -> None:
        self.engine = engine
        self._after_step = after_step
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.error: BaseException | None = None
        self.aborted = 0  # requests the engine dropped unfinished on abort(): written by the engine thread only
        self._lock = threading.Lock()  # orders _put's check-and-put against _fail_all's set-error-and-drain
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fair-lora-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the engine thread between two steps and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        command = _Command(fn, loop, loop.create_future())
        if not self._put(command):
            raise EngineLoopDead(f"the engine thread has stopped: {self.error!r}")
        return await command.future

    def _put(self, command: "_Command | None") -> bool:
        """Queue a command unless the thread has died. One lock with _fail_all's set-error-and-drain: a command
        is either queued before the drain (and failed by it) or refused here, never left unresolved."""
        with self._lock:
            if not self.alive:
                return False
            self._commands.put(command)
            return True

    async def add_request(self, request_id: str, add: Callable[[], Any]) -> tuple[asyncio.Queue, Any]:
        """Run `add()` (which calls engine.add_request(..., request_id=request_id)) on the engine thread.

        Returns the queue that receives the request's RequestOutputs (or an EngineLoopDead if the engine
        dies), and what `add()` returned."""
        return (await self.add_requests([(request_id, add)]))[0]

    async def add_requests(self, adds: list[tuple[str, Callable[[], Any]]]) -> list[tuple[asyncio.Queue, Any]]:
        """add_request for several requests in one command, so they all enter the engine before its next step.
        All or nothing: if one `add()` raises, the ones before it are aborted and the error is raised."""
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in adds]

        def admit() -> list[Any]:
            results = []
            try:
                for (request_id, add), outputs in zip(adds, queues):
                    results.append(add())
                    self._streams[request_id] = (loop, outputs)
            except BaseException:
                for request_id, _ in adds[: len(results)]:
                    self._streams.pop(request_id, None)
                    self.engine.abort(request_id)
                raise
            return results

        return list(zip(queues, await self.call(admit)))

    def abort(self, request_id: str) -> None:
        """Fire and forget: queued after the request's own add, so it always finds it (or finds it finished)."""

        def abort() -> None:
            self._streams.pop(request_id, None)
            if self.engine.abort(request_id):  # False: it had finished (or was never added)
                self.aborted += 1

        loop = asyncio.get_running_loop()
        self._put(_Command(abort, loop, loop.create_future()))

    def stop(self) -> None:
        self._stopping = True
        self._commands.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_commands(self._wait_s())
                if self.engine.has_unfinished():
                    outputs = self.engine.step()
                    self._publish(outputs)
                    self._observe(outputs)
        except BaseException as error:  # the engine's state is unknown now: fail everything, report unhealthy
            with self._lock:
                self.error = error
                self._fail_all(error)

    def _observe(self, outputs: list[RequestOutput]) -> None:
        try:
            self._after_step(outputs)
        except Exception:  # noqa: BLE001 - metrics and stats must never stop the engine
            logger.exception("the after-step hook failed; serving goes on")

    def _wait_s(self) -> float:
        if not self.engine.has_unfinished():
            return IDLE_WAIT_S
        return STALL_WAIT_S if self.engine.last_step.num_seqs == 0 else 0.0

    def _run_commands(self, wait_s: float) -> None:
        try:
            command = self._commands.get(timeout=wait_s) if wait_s else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            self._run_command(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _run_command(command: _Command) -> None:
        try:
            result = command.fn()
        except Exception as error:  # a user's mistake (unknown adapter, bad input): the caller gets it
            _resolve(command, error=error)
        else:
            _resolve(command, result=result)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = (self._streams.pop if output.finished else self._streams.get)(output.request_id, None)
            if stream is not None:
                _call_soon(stream[0], stream[1].put_nowait, output)

    def _fail_all(self, error: BaseException) -> None:
        dead = EngineLoopDead(f"the engine thread stopped: {error!r}")
        for loop, outputs in self._streams.values():
            _call_soon(loop, outputs.put_nowait, dead)
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None:
                _resolve(command, error=dead)


def _resolve(command: _Command, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if command.future.done():  # the awaiting coroutine was cancelled
            return
        if error is not None:
            command.future.set_exception(error)
        else:
            command.future.set_result(result)

    _call_soon(command.loop, settle)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the replica's event loop is closed: it is shutting down, nobody is waiting
        pass
