"""A TCP proxy in front of a PostgreSQL server that the test can make go silent: it keeps every
socket open and forwards nothing (no reset, no answer), as a host behind a partition looks to its
clients. Resumed, it forwards again."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace


@dataclass
class Proxy:
    upstream: tuple[str, int] | str  # (host, port), or a Unix socket's path
    silent: bool = False
    port: int = 0
    accepted: int = 0  # connections accepted so far
    _open: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> int:
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def silence(self) -> None:
        self.silent = True
        self._open.clear()

    def resume(self) -> None:
        self.silent = False
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await self._open.wait()  # a silent host accepts nothing it answers
        if isinstance(self.upstream, str):
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await self._open.wait()  # silent: what was sent waits, as in a partition
                sink.write(data)
                await sink.drain()
        sink.close()


def upstream_of(url: str) -> tuple[str, int] | str:
    """Where a test server's URL points: (host, port), or its Unix socket's path."""
    from gateway.store.connect import parse_url

    endpoint = parse_url(url).endpoints[0]
    port = endpoint.port or 5432
    if endpoint.host is None or endpoint.host.startswith("/"):
        return f"{endpoint.host or '/run/postgresql'}/.s.PGSQL.{port}"
    return (endpoint.host, port)


def url_through(url: str, *ports: int, attrs: str | None = None) -> str:
    """The same database and login, through proxies on these local ports (in this order)."""
    from gateway.store.connect import Endpoint, parse_url, render_url

    target = parse_url(url)
    hosts = tuple(Endpoint("127.0.0.1", port) for port in ports)
    target = replace(target, endpoints=hosts, target_session_attrs=attrs or "any")
    return render_url(target)
