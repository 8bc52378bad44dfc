"""One streamed request's trip from the ingress to a worker: admission first (so refusals still get their status
code before any byte is sent), then its deltas; closing it early cancels the worker's stream (abort)."""
from collections.abc import AsyncIterator

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.http_errors import HTTPError
from deployments.worker_protocol import Admitted, Delta, Failed, GenerateRequest, Rejected


class WorkerCall:
    def __init__(self, stream: DeploymentResponseGenerator, admitted: Admitted) -> None:
        self._stream = stream
        self.admitted = admitted
        self.finished = False

    @classmethod
    async def start(cls, workers: DeploymentHandle, request: GenerateRequest) -> "WorkerCall":
        stream = workers.options(stream=True).generate_stream.remote(request)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise HTTPError(503, "the worker closed the request without an answer; retry") from None
        except BaseException:
            stream.cancel()
            raise
        if not isinstance(first, Admitted):
            raise cls.refusal(first)
        return cls(stream, first)

    @staticmethod
    def refusal(reply: Rejected | Failed) -> Exception:
        if isinstance(reply, Rejected):
            return reply.error
        return HTTPError(503, f"{reply.message}; retry")

    async def deltas(self) -> AsyncIterator[Delta]:
        async for delta in self._stream:
            if isinstance(delta, Failed):
                raise self.refusal(delta)
            self.finished = delta.finished
            if delta.finish_reason == "error":
                raise HTTPError(500, f"the engine failed on this request: {delta.error}")
            yield delta
            if delta.finished:
                return
        if not self.finished:
            raise HTTPError(503, "the worker ended the stream before the request finished; retry")

    def close(self) -> None:
        if not self.finished:
            self._stream.cancel()
