"""Reading member profiles from storage. Knows tables, not GraphQL and not the access decision."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import models
from gateway.domain import MembershipStatus, Tier


@dataclass(frozen=True, slots=True)
class Address:
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member's base fields as stored."""

    id: uuid.UUID
    first_name: str
    last_name: str
    email: str
    phone: str | None
    address: Address
    tier: Tier
    points: int
    member_since: dt.date
    membership_status: MembershipStatus
    deceased: bool

    @property
    def membership_active(self) -> bool:
        return self.membership_status is MembershipStatus.ACTIVE


_COLUMNS = (
    models.Member.id,
    models.Member.first_name,
    models.Member.last_name,
    models.Member.email,
    models.Member.phone,
    models.Member.street,
    models.Member.postal_code,
    models.Member.city,
    models.Member.country,
    models.Member.tier,
    models.Member.points,
    models.Member.member_since,
    models.Member.membership_status,
    models.Member.deceased,
)


async def fetch_members(
    connection: AsyncConnection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, MemberRecord]:
    """The members among `ids` that exist, in one statement whatever the number of ids."""
    if not ids:
        return {}
    rows = await connection.execute(select(*_COLUMNS).where(models.Member.id.in_(list(ids))))
    return {
        row.id: MemberRecord(
            id=row.id,
            first_name=row.first_name,
            last_name=row.last_name,
            email=row.email,
            phone=row.phone,
            address=Address(row.street, row.postal_code, row.city, row.country),
            tier=Tier(row.tier),
            points=row.points,
            member_since=row.member_since,
            membership_status=MembershipStatus(row.membership_status),
            deceased=row.deceased,
        )
        for row in rows
    }


async def member_exists(connection: AsyncConnection, member_id: uuid.UUID) -> bool:
    found = await connection.scalar(select(models.Member.id).where(models.Member.id == member_id))
    return found is not None
