"""ASGI middleware: a request id on every request, response and log line, one log line per
request, and the last word on an unexpected failure: a masked 500 that carries the request id,
logged once with it (outside this middleware nothing knows the id any more). A client that
leaves before its body has arrived is no failure: it is logged as gone and answered nothing.
Written as plain ASGI (not BaseHTTPMiddleware) so it adds no task per request.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import exception_summary

REQUEST_ID_HEADER = "x-request-id"
# Logged for a client that closed its connection before it was answered (nginx's code for it).
CLIENT_GONE = 499
SCOPE_KEY = "tillit.request_id"
# Accept a caller's id only if it is short and plain, so it is safe in logs and the audit trail.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = structlog.get_logger("tillit.http")
_MASKED = (
    b'{"errors":[{"message":"Internal server error.",'
    b'"extensions":{"code":"INTERNAL_SERVER_ERROR"}}]}'
)


def request_id_of(scope: Scope) -> str:
    """The id the middleware gave this request."""
    request_id: str = scope[SCOPE_KEY]
    return request_id


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _ACCEPTABLE_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope[SCOPE_KEY] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Raised by reading the body after the client closed the connection: there is no one
            # to answer, and nothing went wrong here, so no error and no trace.
            log.info("request.disconnected")
            status = CLIENT_GONE
        except Exception as exc:
            # Logged here, once, with the request id, and never re-raised: the server would log
            # it a second time, without the id, and with the exception's message.
            log.error("http.unexpected_error", **exception_summary(exc))
            status = 500
            if not started_response:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(_MASKED)).encode()),
                            (REQUEST_ID_HEADER.encode(), request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _MASKED})
        finally:
            log.info(
                "request.finished",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()
