"""Every error the ingress returns, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from deployments.worker_rerun import WorkerLostError
from fair_lora.serving.core_client import EngineDeadError
from fair_lora.errors import (
    AdapterError,
    AdapterInUseError,
    AdapterPoolFullError,
    FairLoRAError,
    QueueFullError,
    RequestError,
    UnknownAdapterError,
)

RETRY_AFTER_S = "1"
# Every status the app answers: OpenAI's client's exception name where it has one (vLLM sends the same), else alike.
ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
# Most specific first: AdapterError catches the rest of the adapter family (bad name, path, format).
_STATUS_OF = (
    (UnknownAdapterError, 404),
    (AdapterInUseError, 409),
    (AdapterPoolFullError, 503),
    (AdapterError, 400),
    (RequestError, 400),
    (QueueFullError, 429),
)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": RETRY_AFTER_S} if self.status in (429, 503) else {}

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "APIStatusError")  # OpenAI's client's name for any other status
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def to_http_error(error: BaseException) -> HTTPError:
    """Map what a request can run into to a status; anything unknown is a bug and says so (500)."""
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, FairLoRAError):
        status = next((code for kind, code in _STATUS_OF if isinstance(error, kind)), 400)
        return HTTPError(status, str(error))
    if isinstance(error, BackPressureError):
        return HTTPError(429, "every worker's queue is full; retry later")
    if isinstance(error, WorkerLostError):
        return HTTPError(503, f"{error}; retry")
    if isinstance(error, (RayActorError, EngineDeadError, DeploymentUnavailableError)):
        return HTTPError(503, f"the worker serving this request failed ({type(error).__name__}); retry")
    if isinstance(error, RayTaskError):  # the worker raised: a bug of ours for this request, not a worker lost
        return HTTPError(500, f"internal error in the worker: {error.cause!r}")
    return HTTPError(500, f"internal error: {error!r}")


# What a request can run into without a bug on our side; each is answered by to_http_error's mapping.
EXPECTED_ERRORS = (HTTPError, FairLoRAError, RayError, RayServeException)


async def http_error_handler(_: Request, error: Exception) -> JSONResponse:
    return to_http_error(error).response()


async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    if tuple(first.get("loc", ())) == ("body",) and "json" not in request.headers.get("content-type", ""):
        # Without that header the body reaches validation as text, and pydantic's message says nothing of why.
        return HTTPError(400, "the body must be a JSON object sent with the header 'content-type: application/json' "
                              f"(this request's content-type: {request.headers.get('content-type') or 'none'})").response()
    if first.get("type") == "json_invalid":  # its loc holds the character offset, which names no field
        offset = next((part for part in first.get("loc", ()) if isinstance(part, int)), None)
        where = f" at character {offset}" if offset is not None else ""
        why = first.get("ctx", {}).get("error", "decode error")
        return HTTPError(400, f"the body is not valid JSON: {why}{where}").response()
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(where) or None
    # Our own checks raise ValueError, which pydantic reports as "Value error, <message>": the message is enough.
    why = str(first["ctx"]["error"]) if first.get("type") == "value_error" else first.get("msg", "invalid request body")
    message = f"{param}: {why}" if param else str(why)
    return HTTPError(400, message, param).response()


async def route_error_handler(_: Request, error: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods, in OpenAI's error shape like every other error."""
    return HTTPError(error.status_code, str(error.detail)).response()


async def unexpected_error_handler(_: Request, error: Exception) -> JSONResponse:
    return to_http_error(error).response()
