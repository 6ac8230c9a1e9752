"""The store's seams: the typed raw protocol, and driver errors translated once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy.exc
from mypy import api as mypy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import DatabaseUnavailable
from gateway.settings import Settings
from gateway.store import db as store


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("unexpected protocol state"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.QueryCanceledError("statement timeout"),
        sqlalchemy.exc.DBAPIError("x", None, ConnectionRefusedError()),
        ConnectionRefusedError(),
    ],
    ids=["protocol-state", "closed", "shutdown", "timeout", "wrapped-refused", "refused"],
)
def test_driver_failures_leave_the_store_as_database_unavailable(error: BaseException) -> None:
    """They end a request with 503 AUDIT_UNAVAILABLE (fail closed), not a masked 500; nothing
    above gateway.store names the driver's classes."""
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        error.__cause__ = error.orig
    with pytest.raises(DatabaseUnavailable) as raised, store.translated():
        raise error

    assert raised.value.__cause__ is error
    assert store.unavailable(error)


def test_other_errors_pass_the_seam_unchanged() -> None:
    with pytest.raises(ValueError, match="a bug"), store.translated():
        raise ValueError("a bug")

    assert not store.unavailable(ValueError("a bug"))


async def test_raw_of_runs_in_the_sqlalchemy_transaction(db: AsyncEngine) -> None:
    """Pins the asyncpg adapter internals raw_of reaches into: the raw statement runs inside the
    transaction SQLAlchemy began, so a rollback undoes it."""
    async with db.connect() as connection:
        transaction = await connection.begin()
        raw = await store.raw_of(connection)
        await raw.execute("INSERT INTO rate_limits VALUES ('client:raw-of', now())")
        seen = await connection.scalar(
            text("SELECT count(*) FROM rate_limits WHERE subject = 'client:raw-of'")
        )
        await transaction.rollback()
        left = await connection.scalar(
            text("SELECT count(*) FROM rate_limits WHERE subject = 'client:raw-of'")
        )

    assert (seen, left) == (1, 0)


@pytest.mark.parametrize(
    ("call", "refused"),
    [
        # A SQLAlchemy connection where the raw protocol is asked for...
        (
            "async def f(c: AsyncConnection) -> None:\n    await fetch_consent_states(c, [])",
            'incompatible type "AsyncConnection"; expected "Raw"',
        ),
        # ...and the raw protocol where SQLAlchemy is.
        (
            "async def f(r: Raw) -> None:\n    await fetch_history(r, uuid.uuid4())",
            'incompatible type "Raw"; expected "AsyncConnection"',
        ),
        (
            "async def f(r: Raw) -> None:\n    await r.execute(select(1))",
            'expected "str"',
        ),
    ],
    ids=["sqlalchemy-into-raw", "raw-into-sqlalchemy", "select-on-raw"],
)
def test_mypy_refuses_a_call_on_the_wrong_protocol(call: str, refused: str, tmp_path: Path) -> None:
    program = (
        textwrap.dedent(
            """
        import uuid
        from sqlalchemy import select
        from sqlalchemy.ext.asyncio import AsyncConnection
        from gateway.records.consents import fetch_consent_states, fetch_history
        from gateway.store.db import Raw
        """
        )
        + call
    )
    source = tmp_path / "wrong_protocol.py"
    source.write_text(program, encoding="utf-8")
    stdout, _, status = mypy.run(["--strict", str(source)])

    assert status == 1, stdout
    assert refused in stdout


async def test_the_raw_pool_plans_its_statements_once_per_connection(
    database_url: str, settings: Settings
) -> None:
    """The hot statements keep one generic plan per connection instead of a plan per execution
    (the profile-read bundle's planning was half its statement time)."""
    pool = await store.create_raw_pool(database_url, settings)
    try:
        async with pool.acquire() as connection:
            mode = await connection.fetchval("SHOW plan_cache_mode")
    finally:
        await pool.close()

    assert mode == "force_generic_plan"
