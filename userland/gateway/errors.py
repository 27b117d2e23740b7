"""Failures as OpenAI's error body, with the HTTP status an OpenAI client expects for each errno.

Every error the gateway answers is an ApiError: a request it refuses itself (a bad parameter, a
missing key, a body too large) or a syscall's errno, mapped here and nowhere else. The body is
OpenAI's `{"error": {"message", "type", "param", "code"}}`, so the official clients raise their
usual exception classes (BadRequestError, AuthenticationError, NotFoundError, RateLimitError...).
"""

from __future__ import annotations

import json
import math

from ..errors import KernelUnavailable, KeyRefused, LLMOSError

# errno -> (HTTP status, OpenAI error type). EAGAIN and EDQUOT are rate limits: 429 with Retry-After.
STATUS_OF_ERRNO: dict[str, tuple[int, str]] = {
    "EINVAL": (400, "invalid_request_error"),
    "EPERM": (403, "permission_error"),
    "EACCES": (403, "permission_error"),
    "ENOENT": (404, "not_found_error"),
    "EAGAIN": (429, "rate_limit_error"),
    "EDQUOT": (429, "rate_limit_error"),
    "ENOMEM": (503, "service_unavailable"),
    "EBUSY": (503, "service_unavailable"),
    "ECANCELED": (503, "service_unavailable"),    # a kill or shutdown ended it: not the client's fault
    "ETIMEDOUT": (504, "timeout"),
    "ENOSYS": (501, "not_implemented"),
    "EIO": (500, "server_error"),
}
DEFAULT_RETRY_AFTER_S = 1     # for a 429 whose errno carried no retry_after


class ApiError(Exception):
    """One HTTP error answer: status, OpenAI's body fields, and Retry-After for a 429."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.status != 429 and self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after or DEFAULT_RETRY_AFTER_S)))}

    def sse(self) -> bytes:
        """The error as one server-sent event, for a failure after a stream's first chunk."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def bad_param(param: str, message: str) -> ApiError:
    """400 naming the parameter, as OpenAI does."""
    return ApiError(400, message, param=param, code="invalid_parameter")


def unsupported(param: str, why: str = "") -> ApiError:
    return ApiError(400, f"'{param}' is not supported by llmos{': ' + why if why else ''}", param=param,
                    code="unsupported_parameter")


def from_syscall(exc: LLMOSError, param: str | None = None, invalid: str | None = None) -> ApiError:
    """The answer for a syscall that failed: a lost kernel is 503 (a refused key is not: 403), each errno its status.

    `param` (the model) is named only in a 404: the kernel's EINVAL says what is wrong in its message, not
    which request parameter it came from, and naming the model there would point the client the wrong way;
    `invalid` is the parameter an EINVAL is about, where the caller could tell it from the message."""
    if isinstance(exc, KernelUnavailable) and not isinstance(exc, KeyRefused):
        return ApiError(503, f"the llmos kernel is unavailable: {exc.message}", "service_unavailable",
                        code="kernel_unavailable", retry_after=DEFAULT_RETRY_AFTER_S)
    status, kind = STATUS_OF_ERRNO.get(exc.errno, (500, "server_error"))
    code = "model_not_found" if exc.errno == "ENOENT" else exc.errno
    named = param if status == 404 else invalid if exc.errno == "EINVAL" else None
    return ApiError(status, exc.message, kind, param=named, code=code,
                    retry_after=exc.retry_after if status in (429, 503) else None)
