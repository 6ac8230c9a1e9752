"""The header deadline, against uvicorn started as `tillit serve` starts it: a connection whose
request line and headers do not arrive in time is closed; one that sends them in time is served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.serving import free_port
from gateway.app import create_app
from gateway.cli.server import SERVER_OPTIONS
from gateway.web.protocol import HeaderTimeoutProtocol
from tests.conftest import make_settings

DEADLINE = 1.0
# Time given on top of the deadline for a busy test machine.
SLACK = 3.0
HALF_A_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: tillit.test\r\nX-Slow: "
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: tillit.test\r\n\r\n"


@asynccontextmanager
async def served(gateway_url: str) -> AsyncIterator[int]:
    """The gateway on a real port, in this event loop, with `tillit serve`'s options."""
    app = create_app(
        make_settings(gateway_url, header_timeout_seconds=DEADLINE), database_url=gateway_url
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", **SERVER_OPTIONS)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    assert config.http_protocol_class is HeaderTimeoutProtocol
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the server closes the connection (fails if it does not, in time)."""
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE + SLACK):
        while await reader.read(4096):
            pass
    return time.monotonic() - started


async def test_a_connection_that_sends_half_its_headers_is_closed(
    db: AsyncEngine, gateway_url: str
) -> None:
    async with served(gateway_url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HALF_A_REQUEST)
        await writer.drain()

        waited = await closed_after(reader)

        assert waited >= DEADLINE * 0.9
        writer.close()


async def test_a_silent_connection_is_closed(db: AsyncEngine, gateway_url: str) -> None:
    async with served(gateway_url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        await closed_after(reader)

        writer.close()


async def test_the_deadline_starts_again_after_each_response(
    db: AsyncEngine, gateway_url: str
) -> None:
    """Trickling the next request's headers, a byte at a time, keeps uvicorn's own keep-alive
    timer from ever firing: only the header deadline ends it."""
    async with served(gateway_url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        answer = await reader.readuntil(b'{"status":"ok"}')
        assert answer.startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()

        async def trickle() -> None:
            for byte in HALF_A_REQUEST:
                writer.write(bytes([byte]))
                await asyncio.sleep(DEADLINE / 5)

        trickling = asyncio.create_task(trickle())
        try:
            await closed_after(reader)
        finally:
            trickling.cancel()
        assert time.monotonic() - answered < DEADLINE + SLACK
        writer.close()


async def test_headers_sent_slowly_but_in_time_are_served_on_one_connection(
    db: AsyncEngine, gateway_url: str
) -> None:
    async with served(gateway_url) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        for _ in range(3):  # each request gets the whole deadline again
            writer.write(REQUEST[:20])
            await asyncio.sleep(DEADLINE * 0.5)
            writer.write(REQUEST[20:])
            answer = await reader.readuntil(b'{"status":"ok"}')
            assert answer.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(DEADLINE * 0.2)
        assert time.monotonic() - started > DEADLINE
        writer.close()
