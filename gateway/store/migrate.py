"""Schema migrations through Alembic's API, on a connection we hand in."""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.connect import parse_url, render_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


_PARTITION = re.compile(r"^access_events_\d{4}_\d{2}$")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """What Alembic compares: not the monthly partitions, which the database function manages."""
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The revision the code expects the database to be at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def _run(connection: Connection, action: str, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_run, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_run, "downgrade", revision)


async def current_revision(connection: AsyncConnection) -> str | None:
    def read(sync_connection: Connection) -> str | None:
        return MigrationContext.configure(sync_connection).get_current_revision()

    return await connection.run_sync(read)


GATEWAY_ROLE = "tillit_gateway"
# The login the embedded default serves as: a member of the restricted role, owning nothing.
GATEWAY_LOGIN = "tillit_serve"


async def ensure_gateway_login(engine: AsyncEngine, login: str = GATEWAY_LOGIN) -> None:
    """Make `login` (no password, no superuser, no right to create anything) a member of the
    role the migrations made for the gateway, which may only insert and read audit rows. For a
    server that trusts its local socket, as the embedded one does; elsewhere the operator makes
    the login with a password (docs/audit.md: the restricted role)."""
    async with engine.begin() as connection:
        exists = await connection.scalar(
            text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": GATEWAY_ROLE}
        )
        if not exists:
            raise RuntimeError(f"no role {GATEWAY_ROLE}: migrate the database first")
        await connection.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"'{login}') THEN CREATE ROLE {login} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                f"IN ROLE {GATEWAY_ROLE}; END IF; END $$"
            )
        )


def as_gateway_login(url: str, login: str = GATEWAY_LOGIN) -> str:
    """The same database URL, for the gateway's login (no password: see ensure_gateway_login)."""
    return render_url(parse_url(url).as_login(login))
