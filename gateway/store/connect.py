"""Connecting to PostgreSQL the way production needs it: libpq's URL forms with several hosts, each
host tried in turn within its own connect timeout, and TCP deadlines on every connection.

Both pools (SQLAlchemy's through `async_creator`, the raw asyncpg pool through `connect=`) and the
sealer open their connections here, so a silent host (power loss, a partition: no TCP reset) costs
one connect timeout and then the next host is tried, and a connection whose host went silent is
closed by the kernel within the TCP deadline instead of hanging for TCP's ~15 minutes.

The URL forms (libpq's, https://www.postgresql.org/docs/current/libpq-connect.html):

    postgresql://user@h1:5433,h2:5434/db?target_session_attrs=read-write
    postgresql://user@/db?host=h1,h2&port=5433,5434&target_session_attrs=read-write
    postgresql+asyncpg://user@/db?host=h1:5433&host=h2:5434      (SQLAlchemy's repeated host=)
    postgresql://user@/db?host=/run/postgresql                    (a Unix socket directory)

With more than one host and no `target_session_attrs`, Tillit asks for `read-write`: every
operation writes its access events, so a standby is never a usable server for the gateway.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
import structlog

log = structlog.get_logger("tillit.db")

SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")
# Query parameters this module consumes; every other one goes to asyncpg as it is (sslmode, ...).
_OURS = ("host", "port", "target_session_attrs", "connect_timeout", "user", "password", "dbname")
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


class InvalidDatabaseUrl(ValueError):
    """DATABASE_URL cannot be read as a PostgreSQL URL; the message names what, never a secret."""


@dataclass(frozen=True)
class Endpoint:
    """One server: a name, an address or a Unix socket directory (None: asyncpg's default, as
    libpq's), and a port (None: the default)."""

    host: str | None
    port: int | None


@dataclass(frozen=True)
class Target:
    """Where to connect: the hosts in order, who as, which database, and what a usable server is."""

    endpoints: tuple[Endpoint, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    target_session_attrs: str = "any"
    connect_timeout: float | None = None  # libpq's per-host connect_timeout, when the URL has one
    options: Mapping[str, str] = field(default_factory=dict)  # everything else, for asyncpg

    def as_login(self, user: str) -> Target:
        """The same servers and database for another login, without a password."""
        return replace(self, user=user, password=None)


def parse_url(url: str) -> Target:
    """Read a PostgreSQL URL in any of the forms in the module's docstring."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise InvalidDatabaseUrl("DATABASE_URL must be a postgresql:// URL")
    parts = urlsplit("postgresql://" + url[len(scheme) + 3 :])
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", parts.netloc
    user, colon, password = userinfo.partition(":")
    query = parse_qsl(parts.query, keep_blank_values=True)
    params: dict[str, str] = {}
    hosts_in_query: list[str] = []
    for key, value in query:
        if key == "host":
            hosts_in_query.extend(value.split(","))
        else:
            params[key] = value
    specs = hosts_in_query or [unquote(h) for h in hostlist.split(",")]
    ports = params["port"].split(",") if params.get("port") else []
    endpoints = _endpoints(specs, ports)
    attrs = params.get("target_session_attrs") or ("read-write" if len(endpoints) > 1 else "any")
    if attrs not in _SESSION_ATTRS:
        raise InvalidDatabaseUrl(f"target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}")
    connect_timeout = None
    if params.get("connect_timeout"):
        try:
            connect_timeout = float(params["connect_timeout"])
        except ValueError:
            raise InvalidDatabaseUrl("connect_timeout must be a number of seconds") from None
    database = unquote(parts.path.lstrip("/")) or params.get("dbname") or None
    return Target(
        endpoints=endpoints,
        user=unquote(user) or params.get("user") or None,
        password=unquote(password) if colon else params.get("password"),
        database=database,
        target_session_attrs=attrs,
        connect_timeout=connect_timeout,
        options={k: v for k, v in params.items() if k not in _OURS},
    )


def render_url(target: Target) -> str:
    """The Target as a URL that parse_url reads back the same (the query form, which holds
    several hosts and socket directories alike)."""
    login = quote(target.user or "", safe="")
    if target.password is not None:
        login += ":" + quote(target.password, safe="")
    query: dict[str, str] = {}
    hosts = [f"[{e.host}]" if e.host and ":" in e.host else e.host or "" for e in target.endpoints]
    if any(hosts):
        query["host"] = ",".join(hosts)
    ports = [str(e.port) if e.port else "" for e in target.endpoints]
    if any(ports):
        query["port"] = ",".join(ports)
    query["target_session_attrs"] = target.target_session_attrs
    if target.connect_timeout is not None:
        query["connect_timeout"] = f"{target.connect_timeout:g}"
    query.update(target.options)
    database = quote(target.database or "", safe="")
    return f"postgresql+asyncpg://{login}@/{database}?{urlencode(query, safe='/,')}"


def _endpoints(specs: list[str], ports: list[str]) -> tuple[Endpoint, ...]:
    if len(ports) > 1 and len(ports) != len(specs):
        raise InvalidDatabaseUrl("DATABASE_URL names a different number of hosts and ports")
    endpoints = []
    for index, spec in enumerate(specs):
        host, port = _host_and_port(spec.strip())
        listed = ports[index] if len(ports) > 1 else ports[0] if ports else ""
        if port is None and listed:
            port = _port(listed)
        endpoints.append(Endpoint(host or None, port))
    return tuple(endpoints)


def _host_and_port(spec: str) -> tuple[str, int | None]:
    if spec.startswith("/") or not spec:  # a socket directory, or no host at all
        return spec, None
    if spec.startswith("["):  # [IPv6]:port
        host, _, rest = spec[1:].partition("]")
        return host, _port(rest[1:]) if rest.startswith(":") else None
    host, colon, port = spec.rpartition(":")
    if not colon:
        return spec, None
    return host, _port(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidDatabaseUrl("DATABASE_URL has a port that is not a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class Deadlines:
    """How long each step may take before the connection counts as lost."""

    connect: float = 2.0  # per host: one silent host costs this, then the next is tried
    command: float | None = 6.0  # per statement, on the client (the server's statement_timeout
    # cannot end a wait it does not know about: a silent network, a commit waiting for a standby)
    tcp: float = 10.0  # unacknowledged data, or an idle connection whose keepalives go unanswered


class Connector:
    """Opens connections to a Target: the host that last answered first, then the others in the
    URL's order, each within `deadlines.connect`; then sets the TCP deadlines on the socket.

    One per pool; asyncpg calls it with its own keyword arguments (`loop`, `connection_class`, ...).
    """

    def __init__(
        self,
        target: Target,
        deadlines: Deadlines,
        server_settings: Mapping[str, str],
    ) -> None:
        self.target = target
        self.deadlines = deadlines
        self.server_settings = dict(server_settings)
        self._preferred = 0

    def _order(self) -> list[int]:
        count = len(self.target.endpoints)
        return [(self._preferred + i) % count for i in range(count)]

    async def __call__(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        target = self.target
        timeout = target.connect_timeout or self.deadlines.connect
        dsn = "postgresql://" + (f"?{urlencode(dict(target.options))}" if target.options else "")
        extra = {k: v for k, v in kwargs.items() if k in ("connection_class", "record_class")}
        last: BaseException | None = None
        for index in self._order():
            endpoint = target.endpoints[index]
            began = time.monotonic()
            try:
                connection: asyncpg.Connection = await asyncpg.connect(
                    dsn,
                    host=endpoint.host,
                    port=endpoint.port,
                    user=target.user,
                    password=target.password,
                    database=target.database,
                    timeout=timeout,
                    command_timeout=self.deadlines.command,
                    server_settings=self.server_settings,
                    target_session_attrs=target.target_session_attrs,
                    **extra,
                )
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # this host cannot be used now: the next one may
                last = exc
                log.warning(
                    "database.host_unusable",
                    host_index=index,
                    error_type=type(exc).__name__,
                    seconds=round(time.monotonic() - began, 3),
                )
                continue
            self._preferred = index
            set_tcp_deadlines(connection, self.deadlines.tcp)
            return connection
        assert last is not None
        raise last


def set_tcp_deadlines(connection: asyncpg.Connection, seconds: float) -> None:
    """Keepalives and TCP_USER_TIMEOUT on a TCP connection's socket, so that a host that goes
    silent is given up within about `seconds`, idle or in the middle of a statement.

    asyncpg has no option for these; its transport is reached through `_transport`, which
    tests/gateway/store/test_connect.py pins down.
    """
    transport = connection._transport  # see the docstring
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(seconds / 2))
    interval = max(1, int(seconds / 10))
    count = max(1, int((seconds - idle) / interval))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
