"""A streamed response whose client left: Serve's proxy fails the replica's `receive` with a Ray error instead of
sending http.disconnect. The response must end quietly (no exception for Serve to log as "Task exception was
never retrieved") and close its worker call, so that the worker aborts the request."""
import asyncio

from ray.exceptions import TaskCancelledError

from deployments.call_stream import CallStream


class FakeCall:
    closed = False

    def close(self) -> None:
        self.closed = True


async def endless():
    while True:
        yield "data: {}\n\n"
        await asyncio.sleep(0.01)


def test_a_client_gone_as_serve_says_it_ends_the_stream_quietly_and_closes_the_call():
    call = FakeCall()
    sent = []

    async def receive():
        await asyncio.sleep(0.05)
        raise TaskCancelledError()

    async def send(message):
        sent.append(message)

    response = CallStream(call, endless(), media_type="text/event-stream")
    asyncio.run(asyncio.wait_for(response({"type": "http", "asgi": {"spec_version": "2.0"}}, receive, send), 5))
    assert call.closed and sent[0]["type"] == "http.response.start"
