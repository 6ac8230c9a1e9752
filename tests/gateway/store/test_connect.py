"""Connecting as production needs: libpq's URL forms with several hosts, one connect timeout per
host (a silent host is passed over), the host that answered tried first, TCP deadlines."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from gateway.store import db
from gateway.store.connect import (
    Connector,
    Deadlines,
    Endpoint,
    InvalidDatabaseUrl,
    parse_url,
    render_url,
)
from tests.conftest import make_settings
from tests.proxy import Proxy, upstream_of, url_through


@pytest.mark.parametrize(
    "url",
    [
        # libpq's host list in the authority
        "postgresql://u@h1:5433,h2:5434/db?target_session_attrs=read-write",
        # libpq's parameters, comma-separated
        "postgresql://u@/db?host=h1,h2&port=5433,5434&target_session_attrs=read-write",
        # SQLAlchemy's repeated host= with ports
        "postgresql+asyncpg://u@/db?host=h1:5433&host=h2:5434&target_session_attrs=read-write",
    ],
)
def test_every_multi_host_form_names_the_same_servers(url: str) -> None:
    target = parse_url(url)

    assert target.endpoints == (Endpoint("h1", 5433), Endpoint("h2", 5434))
    assert (target.user, target.database, target.target_session_attrs) == ("u", "db", "read-write")


def test_several_hosts_ask_for_a_writable_server_unless_the_url_says_otherwise() -> None:
    assert parse_url("postgresql://u@h1,h2/db").target_session_attrs == "read-write"
    assert parse_url("postgresql://u@h1/db").target_session_attrs == "any"
    assert parse_url("postgresql://u@h1,h2/db?target_session_attrs=any").target_session_attrs == (
        "any"
    )


def test_sockets_ipv6_passwords_and_other_parameters_are_read() -> None:
    target = parse_url(
        "postgres://me:p%40ss@[::1]:5433,%2Frun%2Fpostgresql/db?sslmode=disable&connect_timeout=3"
    )

    assert target.endpoints == (Endpoint("::1", 5433), Endpoint("/run/postgresql", None))
    assert target.password == "p@ss"
    assert target.connect_timeout == 3.0
    assert dict(target.options) == {"sslmode": "disable"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h1:5433,h2:5434/db?sslmode=require&connect_timeout=2",
        "postgresql+asyncpg://postgres:@/postgres?host=/tmp/pg&port=5432",
        "postgresql://[::1]:5433,h2/db",
        "postgresql://u:s%2Fcret@/db",
    ],
)
def test_a_rendered_target_reads_back_the_same(url: str) -> None:
    target = parse_url(url)

    assert parse_url(render_url(target)) == target
    assert parse_url(render_url(target.as_login("gw"))).user == "gw"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:secret@h/db", "postgresql://"),
        ("postgresql://u:secret@h:port/db", "port"),
        ("postgresql://u:secret@h:70000/db", "port"),
        ("postgresql://u:secret@/db?host=a,b,c&port=1,2", "number of hosts and ports"),
        ("postgresql://u:secret@h/db?target_session_attrs=whatever", "target_session_attrs"),
        ("postgresql://u:secret@h/db?connect_timeout=soon", "connect_timeout"),
    ],
)
def test_a_bad_url_is_refused_by_name_without_its_secret(url: str, says: str) -> None:
    with pytest.raises(InvalidDatabaseUrl) as refused:
        parse_url(url)

    assert says in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.fixture
async def proxies(database_url: str) -> AsyncIterator[tuple[Proxy, Proxy]]:
    """Two proxies in front of the test server: the first to be silenced, the second live."""
    silent, live = Proxy(upstream_of(database_url)), Proxy(upstream_of(database_url))
    await silent.start()
    await live.start()
    silent.silence()
    yield silent, live
    await silent.close()
    await live.close()


async def test_a_silent_host_costs_one_connect_timeout_then_the_next_host_serves(
    proxies: tuple[Proxy, Proxy], database_url: str
) -> None:
    silent, live = proxies
    url = url_through(database_url, silent.port, live.port)
    connect = Connector(parse_url(url), Deadlines(connect=0.5), {})

    first = await connect()
    second = await connect()
    try:
        answers = [await first.fetchval("SELECT 1"), await second.fetchval("SELECT 1")]
    finally:
        await first.close()
        await second.close()

    assert answers == [1, 1]
    assert silent.accepted == 1  # the second connection went to the host that answered
    assert live.accepted == 2


async def test_every_tcp_connection_has_keepalives_and_a_user_timeout(
    proxies: tuple[Proxy, Proxy], database_url: str
) -> None:
    _, live = proxies
    connect = Connector(parse_url(url_through(database_url, live.port)), Deadlines(tcp=10), {})
    connection = await connect()
    try:
        sock = connection._transport.get_extra_info("socket")
        options = {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
        server = await connection.fetchrow(
            "SELECT current_setting('tcp_user_timeout') AS user_timeout"
        )
    finally:
        await connection.close()

    assert options == {"keepalive": 1, "idle": 5, "user_timeout_ms": 10_000}
    assert server is not None


async def test_both_pools_take_a_multi_host_url_past_a_host_that_is_down(
    proxies: tuple[Proxy, Proxy], database_url: str
) -> None:
    _, live = proxies
    down = Proxy(upstream_of(database_url))
    down_port = await down.start()
    await down.close()  # nothing listens there any more: connection refused
    url = url_through(database_url, down_port, live.port, attrs="read-write")
    settings = make_settings(url)
    engine = db.create_engine(url, settings, pool_size=1)
    pool = await db.create_raw_pool(url, settings)
    try:
        async with engine.connect() as connection:
            through_engine = await connection.scalar(text("SELECT 1"))
        async with pool.acquire() as driver:
            through_pool = await driver.fetchval("SELECT current_setting('statement_timeout')")
    finally:
        await pool.close()
        await engine.dispose()

    assert through_engine == 1
    assert through_pool == "5s"
