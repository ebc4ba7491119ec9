"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status, for every
failure the server can meet (bad JSON, validation, unknown routes, missing keys, crashes)."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}
# everything else is "invalid_request_error", as OpenAI
_TYPES = {429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An HTTP answer, not a UsageError: the CLIs never see it, and its statuses include the server's own states
    (429 queue full, 503, 500) as well as a client's mistakes (400, 404)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        body = error_body(self.message, self.status, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def error_body(message: str, status: int = 400, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem pydantic found, named as OpenAI names it (the parameter path, e.g. `messages.0.role`)."""
    error = exc.errors()[0]
    kind = error["type"]
    parts = [str(part) for part in error["loc"] if part != "body"]
    # pydantic names union branches in loc: not parameters
    param = ".".join(p for p in parts if p not in _UNION_TAGS and "[" not in p) or None
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return APIError(400, f"The request body is not valid JSON ({detail}).", code="invalid_json")
    if kind == "missing":
        if param is None:
            return APIError(400, "The request has no body: send a JSON object.", code="missing_body")
        return APIError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    message = error["msg"].removeprefix("Value error, ")
    code = "invalid_type" if kind.endswith("_type") else "invalid_value"
    return APIError(400, f"Invalid '{param}': {message}." if param else f"Invalid request: {message}.", param, code)


def install_error_handlers(app: FastAPI) -> None:
    async def answer(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            exc = validation_error(exc)
        elif isinstance(exc, HTTPException):
            exc = APIError(exc.status_code, str(exc.detail), headers=exc.headers)
        elif not isinstance(exc, APIError):
            logger.error("unhandled error", exc_info=exc)
            exc = APIError(500, f"Internal server error ({type(exc).__name__}).")
        return exc.response()

    for kind in (APIError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, answer)
