"""One streamed request's trip from the ingress to a worker: admission first (so refusals still get their status
code before any byte is sent), then its deltas; closing it early cancels the worker's stream (abort). If its
worker fails before the request's first token, it is re-run on another worker (worker_rerun.py), unseen by the
client; after that, the stream ends with the failure."""
from collections.abc import AsyncIterator

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.http_errors import HTTPError
from deployments.openai_responses import Result
from deployments.worker_protocol import Admitted, Delta, Failed, GenerateRequest
from deployments.worker_rerun import WorkerLostError, lost, pause_before_rerun


class WorkerCall:
    def __init__(
        self, workers: DeploymentHandle, request: GenerateRequest, stream: DeploymentResponseGenerator,
        admitted: Admitted, attempts: int, shows_tokens: bool,
    ) -> None:
        self._workers, self._request = workers, request
        self._stream = stream
        self.admitted = admitted  # of the first run: its worker is in the response's headers
        self.attempts = attempts  # runs started so far
        self.shows_tokens = shows_tokens  # the client sees token ids (or their logprobs), not only text
        self.result = Result(admitted)  # what the run that counts has given so far
        self.shown = False  # some of it reached the client: no re-run from here on
        self.finished = False

    @classmethod
    async def start(cls, workers: DeploymentHandle, request: GenerateRequest, shows_tokens: bool) -> "WorkerCall":
        stream, admitted, attempts = await _admit(workers, request, 0)
        return cls(workers, request, stream, admitted, attempts, shows_tokens)

    async def deltas(self) -> AsyncIterator[Delta]:
        """The deltas of the run that counts, each added to `result` first."""
        while True:
            try:
                async for delta in self._follow():
                    self.result.add(delta)
                    self.shown = self.shown or bool(delta.text or (self.shows_tokens and delta.token_ids))
                    yield delta
                return
            except (RayActorError, WorkerLostError) as error:
                failure = lost(error)
                if self.shown:
                    generated = len(self.result.token_ids)
                    raise HTTPError(503, f"{failure} after {generated} tokens; the output is incomplete") from None
                await pause_before_rerun(self.attempts - 1, failure)
                self._stream, admitted, self.attempts = await _admit(self._workers, self._request, self.attempts)
                self.result = Result(admitted)  # tokens held back (e.g. part of a character) are dropped with it

    async def _follow(self) -> AsyncIterator[Delta]:
        async for delta in self._stream:
            if isinstance(delta, Failed):
                raise lost(delta)
            self.finished = delta.finished
            if delta.finish_reason == "error":
                raise HTTPError(500, f"the engine failed on this request: {delta.error}")
            yield delta
            if delta.finished:
                return
        raise WorkerLostError("the worker ended the stream before the request finished")

    def close(self) -> None:
        if not self.finished:
            self._stream.cancel()


async def _admit(
    workers: DeploymentHandle, request: GenerateRequest, attempts: int
) -> tuple[DeploymentResponseGenerator, Admitted, int]:
    """The request's stream on a worker that admitted it, its Admitted, and the runs started in all; a refusal
    (Rejected) raises its error; a failed worker is stepped past."""
    while True:
        stream = workers.options(stream=True).generate_stream.remote(request)
        attempts += 1
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = WorkerLostError("the worker closed the request without an answer")
        except RayActorError as error:
            first = error
        except BaseException:
            stream.cancel()
            raise
        if isinstance(first, Admitted):
            return stream, first, attempts
        failure = lost(first)
        if failure is None:  # Rejected: the request's own fault, the same on every worker
            raise first.error
        await pause_before_rerun(attempts - 1, failure)
