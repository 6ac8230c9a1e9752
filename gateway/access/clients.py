"""API clients: creating them and rotating their keys.

The plain key is returned once and never stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.auth import generate_key
from gateway.domain import Capability, Role
from gateway.errors import BadUserInput
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
        )
    )
    await _set_purposes(connection, existing, wanted)
    return IssuedClient(existing, name, role, new_key.key, tuple(wanted), tuple(granted))
