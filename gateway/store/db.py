"""PostgreSQL: the engine and the raw pool (one each per process, made in the lifespan or a CLI
command, never at import), the two typed ways to talk to them, and the one seam where driver errors
become "database unavailable".

The operation boundary (gateway.web.boundary) opens each operation's connection: a transaction for
anything that writes, autocommit for operations that only read (their one INSERT of access events
commits on its own). Data functions take a connection and never commit on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.errors import DatabaseUnavailable
from gateway.store.connect import SCHEMES, Connector, Deadlines, parse_url

if TYPE_CHECKING:
    from gateway.settings import Settings

RAW_POOL_TIMEOUT_SECONDS = 5.0


def normalize_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and return the asyncpg one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("DATABASE_URL must be a postgresql:// URL")
    return "postgresql+asyncpg://" + rest


def deadlines(settings: Settings) -> Deadlines:
    """Every connection's deadlines: connect per host, per statement on the client (a second
    longer than the server's statement_timeout, which cannot end a wait the server does not know
    about), and TCP's."""
    return Deadlines(
        connect=settings.db_connect_timeout_seconds,
        command=settings.db_statement_timeout_ms / 1000 + 1,
        tcp=settings.db_tcp_timeout_seconds,
    )


def connector(url: str, settings: Settings, **extra_settings: str) -> Connector:
    """How every connection of the gateway is opened (see gateway.store.connect)."""
    return Connector(
        parse_url(url), deadlines(settings), {**server_settings(settings), **extra_settings}
    )


def create_engine(url: str, settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    size = pool_size or settings.db_pool_size
    connect = connector(url, settings)
    return create_async_engine(
        # The dialect only: connections come from `connect`, which reads every URL form libpq
        # reads (several hosts among them, which SQLAlchemy's URL cannot hold).
        "postgresql+asyncpg://",
        async_creator=connect,
        pool_size=size,
        # No overflow: a connection opened for a burst and closed after it costs PostgreSQL a
        # backend start (measured: 19 per second under the load test, a quarter of its
        # throughput); a request waits for a pooled connection instead (pool_timeout).
        max_overflow=0,
        pool_timeout=5,
        # No ping per checkout (a round trip on every request, measured); a connection the
        # server dropped fails its statement, is discarded, and the next checkout opens a new one.
        pool_pre_ping=False,
        # Parameters can be personal data: keep them out of exception messages and logs.
        hide_parameters=not settings.dev,
    )


async def schema_revision(connection: AsyncConnection) -> str | None:
    """The Alembic revision the database is at; None when it was never migrated."""
    has_table = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not has_table:
        return None
    revision: str | None = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    return revision


def asyncpg_dsn(url: str) -> str:
    return normalize_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def server_settings(settings: Settings) -> dict[str, str]:
    tcp = int(settings.db_tcp_timeout_seconds)
    return {
        "application_name": "tillit",
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
        # The server gives up on a client that went silent as the client gives up on it.
        "tcp_keepalives_idle": str(max(1, tcp // 2)),
        "tcp_keepalives_interval": str(max(1, tcp // 10)),
        "tcp_user_timeout": str(tcp * 1000),
    }


async def _keep(connection: Any) -> None:
    """Nothing to reset: raw connections run autocommit statements or one transaction that has
    ended by release, and change no session state (asyncpg's default reset would cost a round
    trip per request)."""


async def create_raw_pool(url: str, settings: Settings) -> asyncpg.Pool:
    """The pool for the hot operations (see `Raw`): plain asyncpg, no SQLAlchemy, connected as
    the engine is."""
    # The hot statements are the same few, with ids as parameters: plan them once per
    # connection. Left to choose, PostgreSQL planned them afresh on every execution (a custom
    # plan for `id = ANY($1)` looked cheaper than the generic one), which was about half of a
    # one-member read's statement time (measured: 400 us with a plan per execution, 200 us
    # with the generic plan, the same plan shape).
    connect = connector(url, settings, plan_cache_mode="force_generic_plan")
    pool: asyncpg.Pool = await asyncpg.create_pool(
        connect=connect,
        min_size=0,
        max_size=settings.db_pool_size,
        reset=_keep,
    )
    return pool


class Raw:
    """The raw-SQL protocol: asyncpg's `$1` statements, no SQLAlchemy on the way.

    Raw asyncpg is for the request's hot path (measured: SQLAlchemy's statement building and result
    processing took most of a profile read's time, and its connect, begin and commit about 8%).
    A function that takes `Raw` runs on both paths: on a connection of the raw pool (in autocommit
    for reads, in one transaction for consent changes), or inside a SQLAlchemy connection's
    transaction (`raw_of`). A function that takes an `AsyncConnection` runs only where SQLAlchemy
    is, and mypy refuses the other call: neither type converts into the other.

    The lock serialises statements (resolvers of one operation run concurrently); inside a
    SQLAlchemy connection it is the asyncpg adapter's own mutex, shared with SQLAlchemy's
    statements.
    """

    __slots__ = ("_lock", "driver")

    def __init__(self, driver: asyncpg.Connection, lock: asyncio.Lock | None = None) -> None:
        self.driver = driver
        self._lock = lock or asyncio.Lock()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run one statement and return its rows; asyncpg caches the prepared statement per
        connection."""
        async with self._lock:
            rows: list[Any] = await self.driver.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._lock:
            return await self.driver.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._lock:
            await self.driver.execute(sql, *args)

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[asyncpg.Connection]:
        """The driver itself, for what the methods above do not cover (COPY), held alone."""
        async with self._lock:
            yield self.driver


async def raw_of(connection: AsyncConnection) -> Raw:
    """The raw protocol inside `connection`'s transaction, begun here if SQLAlchemy has not begun
    it yet. This reaches into the asyncpg adapter (`_transaction`, `_start_transaction`,
    `_execute_mutex`), which tests/store/test_db.py pins down."""
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    async with adapted._execute_mutex:
        if adapted._transaction is None:
            await adapted._start_transaction()
    return Raw(adapted.driver_connection, adapted._execute_mutex)


@asynccontextmanager
async def raw_operation(pool: asyncpg.Pool, *, transaction: bool) -> AsyncIterator[Raw]:
    """A connection of the raw pool for one hot operation: autocommit for a read (its one INSERT
    of access events commits on its own), else one transaction committed when the block ends.

    A connection the operation lost (the database unavailable, the request's deadline passed in
    the middle of a statement) is closed at once, without a round trip, and the pool opens a new
    one for the next operation: whatever state it was left in is never reused.
    """
    async with pool.acquire(timeout=RAW_POOL_TIMEOUT_SECONDS) as driver:
        try:
            if not transaction:
                yield Raw(driver)
                return
            block = driver.transaction()
            await block.start()
            try:
                yield Raw(driver)
            except BaseException as exc:
                if not lost(exc):
                    await block.rollback()
                raise
            await block.commit()
        except BaseException as exc:
            if lost(exc):
                driver.terminate()
            raise


@asynccontextmanager
async def engine_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()`, except that a connection the operation lost (see `raw_operation`) is
    invalidated instead of rolled back: the rollback would wait on the same silent server."""
    async with engine.connect() as connection:
        try:
            await connection.begin()
            yield connection
            await connection.commit()
        except BaseException as exc:
            if lost(exc):
                await connection.invalidate()
            else:
                await connection.rollback()
            raise


def lost(exc: BaseException) -> bool:
    """Whether the connection an exception came out of may be in a state nobody knows: cancelled
    in the middle of a statement, or the database unavailable."""
    return isinstance(exc, asyncio.CancelledError | TimeoutError) or unavailable(exc)


# -- Driver errors, translated at this one seam ----------------------------------------------------

# Failures that mean "the database cannot be reached or answer now", not "this request is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # The protocol found the connection in a state it cannot continue from (seen when the
    # server shut down in the middle of a statement).
    asyncpg.InternalClientError,
    # Statement timeout, administrator shutdown, "the database system is starting up".
    asyncpg.exceptions.OperatorInterventionError,
    # A standby, or a primary being demoted: it cannot take the access events.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
    asyncio.TimeoutError,
)


def unavailable(exc: BaseException | None) -> bool:
    """Whether `exc`, or what it wraps, says the database cannot answer now."""
    for _ in range(6):
        if exc is None:
            return False
        if isinstance(exc, (DatabaseUnavailable, *_UNAVAILABLE)):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
    return False


# A transaction that lost a race with another: PostgreSQL rolled it back whole (a deadlock victim,
# a serialization failure), or a key it relied on was taken or removed by a transaction that
# committed meanwhile (a unique or a foreign key). Nothing of it stands, and running it again sees
# what the other committed: the operation boundary's caller retries it, a bounded number of times
# (gateway.web.graphql), and the second run answers in domain terms (ALREADY_MEMBER, NOT_FOUND).
_CONTENDED = frozenset({"40001", "40P01", "23505", "23503"})


def contended(exc: BaseException | None) -> str | None:
    """The SQLSTATE if `exc`, or what it wraps, says the transaction lost a race (see above)."""
    for _ in range(6):
        if exc is None:
            return None
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str) and state in _CONTENDED:
            return state
        exc = getattr(exc, "orig", None) or exc.__cause__
    return None


@contextmanager
def translated() -> Iterator[None]:
    """Driver and socket errors that say the database cannot answer now leave as
    DatabaseUnavailable; nothing above this module names asyncpg's or SQLAlchemy's error classes
    (the model: httpx's `map_httpcore_exceptions`). Anything else passes unchanged."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if unavailable(exc):
            raise DatabaseUnavailable() from exc
        raise
