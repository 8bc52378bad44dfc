"""The HTTP response of a streamed request: SSE or NDJSON over a WorkerCall, which it closes however it ends."""
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from ray.exceptions import RayError

from deployments.worker_call import WorkerCall


class CallStream(StreamingResponse):
    """Closes its worker call however the response ends: a client gone before the first chunk is pulled
    never runs the generator's `finally`, and the worker would otherwise generate for nobody."""

    def __init__(self, call: WorkerCall, content, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_or_disconnect() -> Message:
            # Serve's proxy tells a replica that its client left by failing `receive` (TaskCancelledError)
            # instead of ASGI's http.disconnect. Raised out of the response, it reached the app's error handlers
            # after the headers were sent and ended as "Task exception was never retrieved" in the log.
            try:
                return await receive()
            except RayError:
                return {"type": "http.disconnect"}

        try:
            await super().__call__(scope, receive_or_disconnect, send)
        finally:
            self.call.close()
