"""Errors as OpenAI error objects, with llama-server's types and status codes.

    {"error": {"message": "...", "type": "invalid_request_error", "code": 400}}

`ApiError` carries one; the app's exception handlers turn it (and FastAPI's own validation and
routing errors) into a JSON response. Extra fields ride along in the error object, e.g.
`n_prompt_tokens` and `n_ctx` for `exceed_context_size_error`, as llama-server sends them.
"""

from __future__ import annotations

from typing import Any

# HTTP status -> llama-server's error type for it
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "server_error")
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": self.type, **self.extra}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def unsupported(field: str, why: str) -> ApiError:
    """A request field this server does not act on: refused, never silently ignored."""
    return ApiError(400, f"'{field}' is not supported by this server: {why}")
