"""The HTTP/1.1 protocol the gateway is served with: uvicorn's, with a deadline on each request's
line and headers, so that a client sending them slowly (slowloris) cannot hold a connection, and
with it a worker's file descriptors, for ever. uvicorn has no such setting: its keep-alive timer
stops at the first byte of the next request, and before the first request there is none.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.settings import Settings

log = structlog.get_logger("tillit.http")

_DEFAULT_SECONDS: float = Settings.model_fields["header_timeout_seconds"].default


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (what `http="auto"` picks) that closes a connection whose
    request line and headers are not complete within `header_timeout_seconds` of the connection
    opening or of its previous response."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The worker's own settings, from its lifespan state: uvicorn hands its worker processes
        # import strings, not objects, so the class cannot be given them.
        settings = app_state.get("settings")
        self.header_timeout = (
            settings.header_timeout_seconds if isinstance(settings, Settings) else _DEFAULT_SECONDS
        )
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request waiting here has its headers already; it starts now.
        next_has_headers = bool(self.pipeline)
        super().on_response_complete()
        if not next_has_headers and not self.transport.is_closing():
            self._await_headers()

    def _await_headers(self) -> None:
        self._headers_arrived()
        # In a context of its own: armed after a response, it would log under that request's id.
        self.header_deadline = self.loop.call_later(
            self.header_timeout, self._headers_too_slow, context=contextvars.Context()
        )

    def _headers_arrived(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing():
            # Without the client's address, which is personal data.
            log.debug("http.headers_timed_out", seconds=self.header_timeout)
            self.transport.close()
