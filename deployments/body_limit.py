"""A request-size limit in front of the app: a body over it gets 413 before anything parses it (an 8 MB prompt
otherwise costs seconds of tokenization and a worker's memory before the context check refuses it)."""
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http_errors import HTTPError


class BodyTooLarge(Exception):
    """Raised to the app from receive() once a body sent without Content-Length has passed the limit."""


class BodyLimit:
    """Pure ASGI middleware: a body over `max_bytes` is answered 413 in OpenAI's error shape. A declared
    Content-Length is checked before the app runs; a body without one (chunked) is counted as it arrives."""

    # One per process, as the Ingress replica it guards: Ingress.__init__ sets it from AppArgs.max_request_bytes.
    max_bytes = 1 << 20

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return
        received, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                over = received > limit
                if over:
                    raise BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's own answer to a body it could not read (FastAPI's is a 400): ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLarge:
            if started:
                raise  # too late for a status: the server drops the connection
        if over and not started:
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over {limit} bytes (max_request_bytes); send a shorter prompt or fewer messages"
        await HTTPError(413, message).response()(scope, receive, send)
