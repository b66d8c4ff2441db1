"""What every request passes before reaching an endpoint: the API key, the body size limit, and
the access log line written when its response has been sent (a stream's at its end).

A pure ASGI middleware: it sees the whole response, streamed or not, and can refuse a body that
grows too large while it is read (a request without Content-Length) before any endpoint runs.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from starlette.exceptions import HTTPException

from .errors import ApiError

log = logging.getLogger("llmcli.server")

# open without a key, as llama-server keeps them: probes and model discovery; the chat page asks
# for the key itself
PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/v1/models", "/models", "/"})


class BodyTooLarge(HTTPException):
    """Raised while a body is read: FastAPI passes HTTPExceptions on (any other error reading the
    body it would answer with a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")


class Gateway:
    def __init__(self, app, api_keys: frozenset[str] = frozenset(), max_body_bytes: int = 8 * 1024 * 1024):
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        status = {"code": 0, "ended": False}
        headers = dict(scope.get("headers") or [])

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and not status["ended"]:
                status["ended"] = True
                self._log(scope, status["code"], began)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                return await _send_error(send_logged, refusal)
            await self.app(scope, self._limited(receive), send_logged)
        finally:
            if not status["ended"]:  # the client went away before the end
                self._log(scope, status["code"] or 499, began)

    def _refusal(self, scope, headers: dict) -> ApiError | None:
        if self.api_keys and scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            given = _bearer(headers.get(b"authorization", b"")) or headers.get(b"x-api-key", b"")
            # compare_digest against every key: the time taken says nothing about which one is close
            if not any([hmac.compare_digest(given, key) for key in self.api_keys]):
                return ApiError(401, "Invalid API Key", type="authentication_error")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return ApiError(413, f"the request body is larger than {self.max_body_bytes} bytes")
        return None

    def _limited(self, receive):
        """receive, raising BodyTooLarge once the body read so far passes the limit."""
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited

    @staticmethod
    def _log(scope, status: int, began: float) -> None:
        tokens = scope.get("state", {}).get("tokens")
        used = f" tokens {tokens[0]}+{tokens[1]}" if tokens else ""
        log.info("%s %s %d%s %.0f ms", scope["method"], scope["path"], status, used,
                 (time.perf_counter() - began) * 1000.0)


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


async def _send_error(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
