"""One request's trip from the ingress to a worker: admission first (so refusals still get their status
code before any byte is sent), then its deltas; closing it early cancels the worker's stream (abort)."""
from collections.abc import AsyncIterator

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.http_errors import HTTPError
from deployments.openai_responses import Result
from deployments.worker_protocol import Admitted, Delta, GenerateRequest, Rejected


class WorkerCall:
    def __init__(self, stream: DeploymentResponseGenerator, admitted: Admitted) -> None:
        self._stream = stream
        self.admitted = admitted
        self.finished = False

    @classmethod
    async def start(cls, workers: DeploymentHandle, request: GenerateRequest) -> "WorkerCall":
        stream = workers.options(stream=True).generate.remote(request)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise HTTPError(503, "the worker closed the request without an answer; retry") from None
        except BaseException:
            stream.cancel()
            raise
        if isinstance(first, Rejected):
            raise first.error
        return cls(stream, first)

    async def deltas(self) -> AsyncIterator[Delta]:
        async for delta in self._stream:
            self.finished = delta.finished
            yield delta
            if delta.finished:
                return
        if not self.finished:
            raise HTTPError(503, "the worker ended the stream before the request finished; retry")

    async def collect(self) -> Result:
        result = Result(self.admitted)
        async for delta in self.deltas():
            result.add(delta)
        return result

    def close(self) -> None:
        if not self.finished:
            self._stream.cancel()

    @property
    def headers(self) -> dict[str, str]:
        hot = self.admitted.hot_adapter
        return {"x-fair-lora-worker": str(self.admitted.worker), "x-fair-lora-hot-adapter": hot or ""}
