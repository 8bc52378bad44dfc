"""What is done when a worker fails a request: the request is re-run on another worker if nothing of it has
reached the client yet (a non-streamed request always; a stream before its first token), else it ends with a
503 that says so. A worker fails a request when its replica dies (Ray's RayActorError), when its engine process
stops (the worker answers Failed), or when it ends a stream without finishing it."""
import asyncio

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.lost_workers import mark_lost
from deployments.worker_protocol import Completion, Failed, GenerateRequest, Rejected

RERUN_ATTEMPTS = 4  # tries in all: enough to step past each dead worker of a small fleet while Serve replaces it
RERUN_PAUSE_S = 0.05  # between tries: the router's view of the fleet catches up meanwhile


class WorkerLostError(Exception):
    """The worker serving a request failed before the request finished."""


def lost(reply_or_error: Failed | BaseException) -> WorkerLostError | None:
    """The failure as a WorkerLostError if it is a worker's, else None (the request's own error stays as it is)."""
    if isinstance(reply_or_error, Failed):
        mark_lost(reply_or_error.replica)
        return WorkerLostError(f"the worker serving this request failed ({reply_or_error.message})")
    if isinstance(reply_or_error, RayActorError):
        return WorkerLostError(f"the worker serving this request failed ({type(reply_or_error).__name__})")
    if isinstance(reply_or_error, WorkerLostError):
        return reply_or_error
    return None


async def pause_before_rerun(attempt: int, error: WorkerLostError) -> None:
    """Raises `error` once the tries are spent; otherwise waits a little before the next one."""
    if attempt + 1 >= RERUN_ATTEMPTS:
        raise error
    await asyncio.sleep(RERUN_PAUSE_S * (attempt + 1))


async def complete(workers: DeploymentHandle, request: GenerateRequest) -> Completion | Rejected:
    """A non-streamed request, re-run on another worker as long as its worker fails it: nothing of it has been
    sent to the client, so the client only ever sees the answer of the run that finished."""
    attempt = 0
    while True:
        response = workers.generate_once.remote(request)
        try:
            reply = await response
        except asyncio.CancelledError:  # the client went away: the worker aborts the request
            response.cancel()
            raise
        except RayActorError as error:
            reply = error
        if not isinstance(reply, (Failed, RayActorError)):
            return reply
        await pause_before_rerun(attempt, lost(reply))
        attempt += 1
