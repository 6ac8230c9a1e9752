"""Cleansing and objections: corrections under legitimate interest, the notices they owe the
member (GDPR Art. 13/14), and the member's right to object to them (Art. 21)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pycountry
from dateutil.relativedelta import relativedelta
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import (
    Category,
    CleansableField,
    ErrorCode,
    LegalBasis,
    MembershipStatus,
    Purpose,
)
from gateway.errors import BadUserInput, NotFound, Refused
from gateway.records.locks import Hold, lock_member, locked_at
from gateway.store import models
from gateway.store.db import Raw, raw_of

FIELD_CATEGORY = {
    CleansableField.STREET: Category.ADDRESS,
    CleansableField.POSTAL_CODE: Category.ADDRESS,
    CleansableField.CITY: Category.ADDRESS,
    CleansableField.COUNTRY: Category.ADDRESS,
    CleansableField.DECEASED: Category.STATUS,
}
NOTICE_DUE_AFTER = relativedelta(months=1)


def parse_field(raw: str) -> CleansableField:
    try:
        return CleansableField(raw)
    except ValueError:
        known = ", ".join(f.value for f in CleansableField)
        raise BadUserInput(
            f"Cleansing can correct {known}; not {raw[:40]!r}.", argument="field"
        ) from None


def parse_value(field: CleansableField, raw: str) -> Any:
    """The new value in its stored form, or BadUserInput."""
    value = raw.strip() if isinstance(raw, str) else ""
    if not value:
        raise BadUserInput("`newValue` must not be empty.", argument="newValue")
    if len(value) > 200:
        raise BadUserInput("`newValue` is longer than 200 characters.", argument="newValue")
    if field is CleansableField.DECEASED:
        if value.lower() not in ("true", "false"):
            raise BadUserInput("`deceased` is `true` or `false`.", argument="newValue")
        return value.lower() == "true"
    if field is CleansableField.COUNTRY:
        if not is_country_code(value):
            raise BadUserInput(
                "`country` is an assigned ISO 3166-1 alpha-2 code (NO, SE, DK, ...).",
                argument="newValue",
            )
        return value.upper()
    return value


def is_country_code(value: str) -> bool:
    """An assigned ISO 3166-1 alpha-2 code (`ZZ`, user-assigned, is none)."""
    return (
        re.fullmatch(r"[A-Za-z]{2}", value) is not None
        and pycountry.countries.get(alpha_2=value.upper()) is not None
    )


def legitimate_interest_purpose(purpose: Purpose) -> Purpose:
    if purpose.legal_basis is not LegalBasis.LEGITIMATE_INTEREST:
        raise BadUserInput(
            f"Cleansing rests on legitimate interest; {purpose.key} rests on "
            f"{purpose.legal_basis.value}.",
            purpose=purpose.key,
        )
    return purpose


async def has_objected(connection: AsyncConnection, member_id: uuid.UUID, purpose: str) -> bool:
    o = models.Objection
    found = await connection.scalar(
        select(o.id).where(
            o.member_id == member_id, o.purpose_key == purpose, o.lifted_at.is_(None)
        )
    )
    return found is not None


@dataclass(frozen=True, slots=True)
class Cleansing:
    record_id: uuid.UUID | None  # None: the value was already right, nothing was written
    notice_id: uuid.UUID | None
    field: CleansableField
    old_value: Any
    new_value: Any
    due_at: dt.datetime | None


async def record_cleansing(
    connection: AsyncConnection,
    *,
    member_id: uuid.UUID,
    purpose: Purpose,
    field: CleansableField,
    new_value: Any,
    source: str,
    client_id: uuid.UUID | None,
    now: dt.datetime,
) -> Cleansing:
    """Correct one member field, keep old and new value and source, and owe the member a notice
    due a month later. Refused if the member objected to the purpose. Does not commit."""
    legitimate_interest_purpose(purpose)
    category = FIELD_CATEGORY[field]
    if category not in purpose.categories:
        raise Refused(
            ErrorCode.CATEGORY_NOT_IN_PURPOSE,
            f"Category {category.value} is not used by purpose {purpose.key}.",
            purpose=purpose.key,
        )
    m = models.Member
    column = getattr(m, field.value)
    # The member's lock at CHANGE (gateway.records.locks): two corrections of one field apply
    # one after the other, and a closing or an erasure in flight commits first.
    row = (
        await connection.execute(
            select(m.id, column, m.membership_status)
            .where(m.id == member_id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE
        )
    ).first()
    if row is None:
        raise NotFound("No member has this id.", argument="memberId")
    if row[2] != MembershipStatus.ACTIVE.value:
        raise Refused(
            ErrorCode.MEMBERSHIP_INACTIVE,
            "The membership is closed: a member who has left is not cleansed.",
        )
    now = locked_at(now)
    old_value = row[1]
    if await has_objected(connection, member_id, purpose.key):
        raise Refused(
            ErrorCode.OBJECTED,
            "The member objected to this purpose; no further cleansing.",
            purpose=purpose.key,
        )
    if old_value == new_value:
        return Cleansing(None, None, field, old_value, new_value, None)
    await connection.execute(
        update(m).where(m.id == member_id).values({field.value: new_value, "updated_at": now})
    )
    record_id = await connection.scalar(
        insert(models.CleansingRecord)
        .values(
            member_id=member_id,
            purpose_key=purpose.key,
            field=field.value,
            old_value=old_value,
            new_value=new_value,
            source=source,
            recorded_by_client_id=client_id,
            recorded_at=now,
        )
        .returning(models.CleansingRecord.id)
    )
    due_at = now + NOTICE_DUE_AFTER
    notice_id = await connection.scalar(
        insert(models.MemberNotice)
        .values(
            member_id=member_id,
            cleansing_record_id=record_id,
            kind="CLEANSING",
            created_at=now,
            due_at=due_at,
        )
        .returning(models.MemberNotice.id)
    )
    return Cleansing(record_id, notice_id, field, old_value, new_value, due_at)


@dataclass(frozen=True, slots=True)
class ObjectionRecord:
    id: uuid.UUID
    purpose: str
    objected_at: dt.datetime
    created: bool
    lifted_at: dt.datetime | None = None


async def object_to(
    connection: AsyncConnection,
    *,
    member_id: uuid.UUID,
    purpose: Purpose,
    reason: str | None,
    now: dt.datetime,
) -> ObjectionRecord:
    """Record the member's objection (Art. 21) to a legitimate-interest purpose; idempotent."""
    if purpose.legal_basis is not LegalBasis.LEGITIMATE_INTEREST:
        raise Refused(
            ErrorCode.OBJECTION_NOT_APPLICABLE,
            "Objection applies to legitimate-interest purposes. "
            + (
                "Withdraw the consent instead."
                if purpose.legal_basis is LegalBasis.CONSENT
                else f"Purpose {purpose.key} rests on {purpose.legal_basis.value}."
            ),
            purpose=purpose.key,
        )
    if reason is not None and len(reason) > 2000:
        raise BadUserInput("`reason` is longer than 2000 characters.", argument="reason")
    if await lock_member(await raw_of(connection), member_id, Hold.CHANGE) is None:
        raise NotFound("No member has this id.", argument="memberId")
    now = locked_at(now)
    o = models.Objection
    inserted = (
        await connection.execute(
            pg_insert(o)
            .values(member_id=member_id, purpose_key=purpose.key, reason=reason, objected_at=now)
            .on_conflict_do_nothing(
                index_elements=[o.member_id, o.purpose_key], index_where=o.lifted_at.is_(None)
            )
            .returning(o.id, o.objected_at)
        )
    ).first()
    if inserted is not None:
        return ObjectionRecord(inserted.id, purpose.key, inserted.objected_at, created=True)
    existing = (
        await connection.execute(
            select(o.id, o.objected_at).where(
                o.member_id == member_id, o.purpose_key == purpose.key, o.lifted_at.is_(None)
            )
        )
    ).one()
    return ObjectionRecord(existing.id, purpose.key, existing.objected_at, created=False)


@dataclass(frozen=True, slots=True)
class OverdueNotice:
    id: uuid.UUID
    member_id: uuid.UUID
    field: str | None
    due_at: dt.datetime


async def fetch_overdue_notices(
    connection: AsyncConnection, *, now: dt.datetime
) -> list[OverdueNotice]:
    """Notices owed to members, not yet delivered, past their due date; oldest first."""
    n, c = models.MemberNotice, models.CleansingRecord
    rows = await connection.execute(
        select(n.id, n.member_id, c.field, n.due_at)
        .outerjoin(c, c.id == n.cleansing_record_id)
        .where(n.delivered_at.is_(None), n.due_at < now)
        .order_by(n.due_at)
    )
    return [OverdueNotice(r.id, r.member_id, r.field, r.due_at) for r in rows]


async def lift_objection(
    connection: Raw, *, member_id: uuid.UUID, purpose: Purpose, now: dt.datetime
) -> ObjectionRecord | None:
    """The member lifts their objection to a purpose, effective from the next request (the
    decision reads objections in each request's transaction). The row stays, with `lifted_at`:
    the history. None when no objection was in force."""
    if await lock_member(connection, member_id, Hold.CHANGE) is None:
        raise NotFound("No member has this id.", argument="memberId")
    row = await connection.fetchrow(_LIFT, member_id, purpose.key, locked_at(now))
    if row is None:
        return None
    return ObjectionRecord(
        row["id"], purpose.key, row["objected_at"], created=True, lifted_at=row["lifted_at"]
    )


_LIFT = (
    "UPDATE objections SET lifted_at = $3 "
    "WHERE member_id = $1 AND purpose_key = $2 AND lifted_at IS NULL "
    "RETURNING id, objected_at, lifted_at"
)
