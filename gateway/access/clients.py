"""API clients: creating, listing, disabling and enabling them, and rotating their keys.

The plain key is returned once and never stored."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.auth import generate_key
from gateway.domain import Capability, Role
from gateway.errors import BadUserInput, NotFound
from gateway.store import models


@dataclass(frozen=True)
class IssuedClient:
    id: uuid.UUID
    name: str
    role: Role
    key: str
    purposes: tuple[str, ...]
    capabilities: tuple[Capability, ...]


async def _check_purposes(connection: AsyncConnection, purposes: Iterable[str]) -> list[str]:
    wanted = sorted(set(purposes))
    if not wanted:
        return wanted
    known = set(
        (
            await connection.execute(
                select(models.Purpose.key).where(
                    models.Purpose.key.in_(wanted), models.Purpose.retired.is_(False)
                )
            )
        ).scalars()
    )
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise BadUserInput(f"Unknown purpose(s): {', '.join(unknown)}. Run `tillit policy load`?")
    return wanted


async def create_client(
    connection: AsyncConnection,
    *,
    name: str,
    role: Role,
    purposes: Iterable[str] = (),
    capabilities: Iterable[Capability] = (),
) -> IssuedClient:
    """Register a client and return it with its key. Does not commit."""
    name = name.strip()
    if not name or len(name) > 100:
        raise BadUserInput("A client name is 1 to 100 characters.")
    exists = await connection.scalar(select(models.Client.id).where(models.Client.name == name))
    if exists is not None:
        raise BadUserInput(f"A client named {name!r} exists already.")
    wanted = await _check_purposes(connection, purposes)
    granted = sorted(set(capabilities))
    if role is not Role.APP and (wanted or granted):
        raise BadUserInput("Only app clients act under purposes or hold capabilities.")
    new_key = generate_key()
    client_id = await connection.scalar(
        insert(models.Client)
        .values(
            name=name,
            role=role.value,
            key_id=new_key.key_id,
            key_hash=new_key.key_hash,
            capabilities=[c.value for c in granted],
        )
        .returning(models.Client.id)
    )
    assert client_id is not None
    await _set_purposes(connection, client_id, wanted)
    return IssuedClient(client_id, name, role, new_key.key, tuple(wanted), tuple(granted))


async def _set_purposes(
    connection: AsyncConnection, client_id: uuid.UUID, purposes: list[str]
) -> None:
    await connection.execute(
        delete(models.ClientPurpose).where(models.ClientPurpose.client_id == client_id)
    )
    if purposes:
        await connection.execute(
            insert(models.ClientPurpose),
            [{"client_id": client_id, "purpose_key": p} for p in purposes],
        )


async def ensure_client(
    connection: AsyncConnection,
    *,
    name: str,
    role: Role,
    purposes: Iterable[str] = (),
    capabilities: Iterable[Capability] = (),
) -> IssuedClient:
    """Create the client, or give the existing one these settings and a fresh key. Idempotent in
    rows: running it twice leaves one client (whose first key no longer works)."""
    existing = await connection.scalar(select(models.Client.id).where(models.Client.name == name))
    if existing is None:
        return await create_client(
            connection, name=name, role=role, purposes=purposes, capabilities=capabilities
        )
    wanted = await _check_purposes(connection, purposes)
    granted = sorted(set(capabilities))
    new_key = generate_key()
    await connection.execute(
        update(models.Client)
        .where(models.Client.id == existing)
        .values(
            role=role.value,
            key_id=new_key.key_id,
            key_hash=new_key.key_hash,
            capabilities=[c.value for c in granted],
            disabled_at=None,
            previous_key_id=None,
            previous_key_hash=None,
            previous_key_expires_at=None,
        )
    )
    await _set_purposes(connection, existing, wanted)
    return IssuedClient(existing, name, role, new_key.key, tuple(wanted), tuple(granted))


# -- Listing, disabling, enabling, rotating --------------------------------------------------------

DEFAULT_ROTATION_OVERLAP = dt.timedelta(hours=24)
MAX_ROTATION_OVERLAP = dt.timedelta(days=30)


@dataclass(frozen=True)
class ClientSummary:
    id: uuid.UUID
    name: str
    role: Role
    key_id: str
    purposes: tuple[str, ...]
    capabilities: tuple[Capability, ...]
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    previous_key_expires_at: dt.datetime | None


_LIST = text(
    "SELECT c.id, c.name, c.role, c.key_id, c.capabilities, c.created_at, c.disabled_at, "
    "CASE WHEN c.previous_key_expires_at > now() THEN c.previous_key_expires_at END "
    "AS previous_key_expires_at, "
    "coalesce(array_agg(p.purpose_key ORDER BY p.purpose_key) "
    "FILTER (WHERE p.purpose_key IS NOT NULL), '{}') AS purposes "
    "FROM clients c LEFT JOIN client_purposes p ON p.client_id = c.id "
    "GROUP BY c.id ORDER BY c.name"
)


async def list_clients(connection: AsyncConnection) -> list[ClientSummary]:
    """Every client, by name; never a key (only its public id)."""
    return [
        ClientSummary(
            r.id,
            r.name,
            Role(r.role),
            r.key_id,
            tuple(r.purposes),
            tuple(Capability(c) for c in r.capabilities),
            r.created_at,
            r.disabled_at,
            r.previous_key_expires_at,
        )
        for r in await connection.execute(_LIST)
    ]


async def _client_id(connection: AsyncConnection, name: str) -> uuid.UUID:
    found = await connection.scalar(
        select(models.Client.id).where(models.Client.name == name.strip()).with_for_update()
    )
    if found is None:
        raise NotFound(f"No client is named {name.strip()!r}.")
    return found


async def set_disabled(
    connection: AsyncConnection, name: str, *, disabled: bool, now: dt.datetime
) -> tuple[uuid.UUID, bool]:
    """Disable (or enable) a client; returns its id and whether anything changed. A disabled
    client's keys are refused from the next lookup: at most the client cache's lifetime later
    (gateway.access.caches.POLICY_TTL_SECONDS) on a worker that had it cached."""
    client_id = await _client_id(connection, name)
    c = models.Client
    changed = await connection.scalar(
        update(c)
        .where(
            c.id == client_id, c.disabled_at.is_(None) if disabled else c.disabled_at.is_not(None)
        )
        .values(disabled_at=now if disabled else None)
        .returning(c.id)
    )
    return client_id, changed is not None


@dataclass(frozen=True)
class Rotation:
    id: uuid.UUID
    name: str
    key: str
    key_id: str
    previous_key_id: str
    previous_valid_until: dt.datetime


async def rotate_key(
    connection: AsyncConnection, name: str, *, overlap: dt.timedelta, now: dt.datetime
) -> Rotation:
    """Give a client a new key; the current one keeps working for `overlap` (so the app can be
    redeployed with the new key), then stops. A key rotated out earlier stops at once."""
    if overlap < dt.timedelta(0) or overlap > MAX_ROTATION_OVERLAP:
        raise BadUserInput(f"The overlap is between 0 and {MAX_ROTATION_OVERLAP.days} days.")
    client_id = await _client_id(connection, name)
    c = models.Client
    current = (
        await connection.execute(select(c.key_id, c.key_hash).where(c.id == client_id))
    ).one()
    new_key = generate_key()
    until = now + overlap
    await connection.execute(
        update(c)
        .where(c.id == client_id)
        .values(
            key_id=new_key.key_id,
            key_hash=new_key.key_hash,
            previous_key_id=current.key_id,
            previous_key_hash=current.key_hash,
            previous_key_expires_at=until,
        )
    )
    return Rotation(client_id, name.strip(), new_key.key, new_key.key_id, current.key_id, until)
