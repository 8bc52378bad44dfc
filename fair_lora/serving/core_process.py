"""The engine-core process: one LLMEngine, stepped in a loop that does nothing else.

A serving front-end (serving/async_engine.py, in the process that speaks HTTP or Ray) starts it and talks to
it over a socket pair: it tokenizes, detokenizes and streams; this process only runs commands between steps
and steps, and sends each step's new tokens of every request in one message. Python work done for requests
in the front-end then never holds this process's interpreter lock, so it never delays a step (vLLM V1's
EngineCore process, SGLang's scheduler process). It exits when its parent goes away.

Run as `python -m fair_lora.serving.core_process FD` with FD the child end of the socket pair.
"""
import ctypes
import logging
import signal
import sys
import traceback
from multiprocessing.connection import Connection

import torch

from fair_lora.config import EngineConfig
from fair_lora.engine.llm_engine import LLMEngine
from fair_lora.engine.step_stats import StepStats
from fair_lora.errors import FairLoRAError
from fair_lora.serving.core_messages import Abort, Batch, Call, Fatal, Ready, Reply, Shutdown, StepReport, TokenDelta

PR_SET_PDEATHSIG = 1  # linux/prctl.h
IDLE_POLL_S = 1.0  # an idle core blocks on its socket; this only bounds how long between liveness checks
STALL_POLL_S = 0.002  # a step that scheduled nothing (every request waits for memory) retries after this
CALLS = {  # what a client may ask; each runs between two steps
    "add_request": lambda e, *a: e.add_request(*a),
    "load_adapter": lambda e, *a: e.load_adapter(*a),
    "unload_adapter": lambda e, *a: e.unload_adapter(*a),
    "set_hot_adapter": lambda e, *a: e.set_hot_adapter(*a),
    "assign_hot_adapter": lambda e, *a: e.assign_hot_adapter(*a),
    "declined_merges": lambda e: e.declined_merges(),
    "switches_since": lambda e, count: e.switches[count:],
    "hot_adapter": lambda e: e.hot_adapter,
    "adapters": lambda e: e.adapters(),
    "requests_using": lambda e, *a: e.requests_using(*a),
    "stats": lambda e: {**e.stats(), "last_batch_size": e.last_step.num_seqs},
}


class EngineCore:
    def __init__(self, engine: LLMEngine, conn: Connection) -> None:
        self.engine, self.conn = engine, conn
        self.reported_queue = (0, 0)  # (waiting, running) as the last report sent said

    def run(self) -> None:
        """Until Shutdown or the parent closing its end: commands between steps, one message per turn."""
        while True:
            replies = self._run_commands(self._wait_s())
            if replies is None:
                return
            report = self._step() if self.engine.has_unfinished() else self._idle_report()
            if replies or report is not None:
                self.conn.send(Batch(replies, report))
                if report is not None:
                    self.reported_queue = (report.waiting, report.running)

    def _idle_report(self) -> StepReport | None:
        """Aborts emptied the queue and no step followed to say so: without this report the front-end (and the
        router that reads its queue) would see the aborted requests as queued until the next request's step."""
        if self.reported_queue == (0, 0):
            return None
        return StepReport([], StepStats(hot_adapter=self.engine.hot_adapter), 0, 0)

    def _wait_s(self) -> float:
        if not self.engine.has_unfinished():
            return IDLE_POLL_S
        return STALL_POLL_S if self.engine.last_step.num_seqs == 0 else 0.0

    def _run_commands(self, wait_s: float) -> list[Reply] | None:
        """Every command already sent (waiting up to wait_s for the first); None on Shutdown or EOF."""
        replies: list[Reply] = []
        try:
            ready = self.conn.poll(wait_s)
            while ready:
                message = self.conn.recv()
                if isinstance(message, Shutdown):
                    return None
                if isinstance(message, Abort):
                    self.engine.abort(message.request_id)
                elif isinstance(message, Call):
                    replies.append(self._call(message))
                ready = self.conn.poll(0)
        except (EOFError, OSError):  # the parent is gone: nobody will read what we produce
            return None
        return replies

    def _call(self, call: Call) -> Reply:
        try:
            return Reply(call.call_id, CALLS[call.method](self.engine, *call.args))
        except FairLoRAError as error:  # the caller's mistake, or a refused change: it gets it back
            return Reply(call.call_id, error=error)
        except Exception as error:  # noqa: BLE001 - a failed command fails its caller; the next step shows the rest
            return Reply(call.call_id, error=RuntimeError(f"{call.method} failed in the engine: {error!r}"))

    def _step(self) -> StepReport | None:
        outputs = self.engine.step()
        stats = self.engine.last_step
        if not outputs and not stats.num_seqs:
            return None
        deltas = []
        for o in outputs:
            logprobs = o.logprobs[len(o.logprobs) - len(o.new_token_ids) :] if o.logprobs is not None else None
            reason = o.finish_reason if o.finished else None
            deltas.append(TokenDelta(o.request_id, o.new_token_ids, logprobs, reason, o.error))
        scheduler = self.engine.scheduler
        return StepReport(deltas, stats, len(scheduler.waiting), len(scheduler.running))


def _ready(engine: LLMEngine) -> Ready:
    device = torch.device(engine.config.device)
    return Ready(
        model_dir=str(engine.model_dir),
        base_model_name=engine.base_model_name,
        max_model_len=engine.max_model_len,
        vocab_size=engine.model.args.vocab_size,
        adapters=engine.adapters(),
        memory_plan=engine.memory_plan.describe(),
        warmup_seconds=engine.warmup_seconds,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (the socket's end-of-file only reaches a core
    between steps; a killed worker's core must give its GPU memory back at once, before its replacement plans)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(fd: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fair_lora core %(levelname)s %(message)s")
    _die_with_parent()
    conn = Connection(fd)
    try:
        config, torch_threads = conn.recv()
        assert isinstance(config, EngineConfig)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        engine = LLMEngine(config)
        conn.send(_ready(engine))
        EngineCore(engine, conn).run()
    except (EOFError, BrokenPipeError):
        return 0  # the parent went away
    except BaseException:  # noqa: BLE001 - the parent must learn why the core stops, then the process exits
        try:
            conn.send(Fatal(traceback.format_exc()))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
