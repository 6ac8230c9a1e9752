"""Everything Tillit holds about one member and everything done with it (GDPR Art. 15 and 20):
for `me`, `exportMyData` and GET /me/export. Storage only: callers decide who may ask."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.log import LogFilter, LogPage, fetch_page
from gateway.domain import Purpose
from gateway.records.consents import ConsentEventRecord, fetch_history
from gateway.records.members import EnrichedValue, MemberRecord, fetch_enrichment, fetch_members
from gateway.store import models
from gateway.store.db import Raw, raw_of

EXPORT_FORMAT = "tillit-member-export/1"


@dataclass(frozen=True, slots=True)
class Notice:
    id: uuid.UUID
    field: str | None
    old_value: Any
    new_value: Any
    source: str | None
    changed_at: dt.datetime | None
    due_at: dt.datetime
    delivered_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ObjectionEntry:
    id: uuid.UUID
    purpose: str
    reason: str | None
    objected_at: dt.datetime
    lifted_at: dt.datetime | None


async def fetch_member(connection: Raw, member_id: uuid.UUID) -> MemberRecord | None:
    return (await fetch_members(connection, [member_id])).get(member_id)


async def fetch_enriched(connection: Raw, member_id: uuid.UUID) -> list[EnrichedValue]:
    values = (await fetch_enrichment(connection, [member_id])).get(member_id, {})
    return [values[field] for field in sorted(values)]


async def fetch_consent_history(
    connection: AsyncConnection, member_id: uuid.UUID
) -> list[ConsentEventRecord]:
    return await fetch_history(connection, member_id)


async def fetch_notices(
    connection: AsyncConnection, member_id: uuid.UUID, *, deliver: bool, now: dt.datetime
) -> list[Notice]:
    """The notices owed to the member, newest first. With `deliver`, those not yet delivered are
    marked delivered now (the member is reading them), in the caller's transaction."""
    n, c = models.MemberNotice, models.CleansingRecord
    rows = (
        await connection.execute(
            select(
                n.id,
                c.field,
                c.old_value,
                c.new_value,
                c.source,
                c.recorded_at,
                n.due_at,
                n.delivered_at,
            )
            .outerjoin(c, c.id == n.cleansing_record_id)
            .where(n.member_id == member_id)
            .order_by(n.created_at.desc())
        )
    ).all()
    notices = [
        Notice(
            r.id,
            r.field,
            r.old_value,
            r.new_value,
            r.source,
            r.recorded_at,
            r.due_at,
            r.delivered_at,
        )
        for r in rows
    ]
    if deliver and any(notice.delivered_at is None for notice in notices):
        await connection.execute(
            update(n)
            .where(n.member_id == member_id, n.delivered_at.is_(None))
            .values(delivered_at=now)
        )
    return notices


async def fetch_objections(
    connection: AsyncConnection, member_id: uuid.UUID
) -> list[ObjectionEntry]:
    o = models.Objection
    rows = await connection.execute(
        select(o.id, o.purpose_key, o.reason, o.objected_at, o.lifted_at)
        .where(o.member_id == member_id)
        .order_by(o.objected_at.desc())
    )
    return [ObjectionEntry(r.id, r.purpose_key, r.reason, r.objected_at, r.lifted_at) for r in rows]


async def fetch_access_history(
    connection: AsyncConnection,
    member_id: uuid.UUID,
    *,
    first: int,
    after: str | None,
    by_the_member: bool | None = None,
) -> LogPage:
    """Who touched the member's data, newest first (only others, or only the member, if asked)."""
    return await fetch_page(
        connection,
        LogFilter(member_id=member_id, by_the_member=by_the_member),
        first=first,
        after=after,
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def export_document(
    connection: AsyncConnection,
    member: MemberRecord,
    *,
    purposes: Sequence[Purpose],
    now: dt.datetime,
) -> dict[str, Any]:
    """The member's data as one JSON document: profile, enriched values with provenance,
    consents with their full history, notices, objections, and every access to their data."""
    member_id = member.id
    history = await fetch_consent_history(connection, member_id)
    accesses: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await fetch_access_history(connection, member_id, first=500, after=after)
        accesses.extend(
            {
                "at": _iso(e.occurred_at),
                "operation": e.operation,
                "by": e.actor_label,
                "by_role": e.client_role,
                "purpose": e.purpose,
                "outcome": e.outcome,
                "fields_released": e.fields_released,
                "fields_withheld": e.fields_withheld,
            }
            for e in page.entries
        )
        if not page.has_next_page:
            break
        after = page.entries[-1].cursor
    address = member.address
    return {
        "format": EXPORT_FORMAT,
        "generated_at": _iso(now),
        "member": {
            "id": str(member_id),
            "first_name": member.first_name,
            "last_name": member.last_name,
            "email": member.email,
            "phone": member.phone,
            "address": {
                "street": address.street,
                "postal_code": address.postal_code,
                "city": address.city,
                "country": address.country,
            },
            "tier": member.tier.value,
            "points": member.points,
            "member_since": member.member_since.isoformat(),
            "membership_status": member.membership_status.value,
            "deceased": member.deceased,
        },
        "enriched": [
            {
                "field": v.field.value,
                "value": v.value,
                "source": v.source,
                "obtained_at": _iso(v.obtained_at),
                "purpose": v.purpose,
                "consent_id": str(v.consent_id),
            }
            for v in await fetch_enriched(await raw_of(connection), member_id)
        ],
        "consents": [
            {
                "receipt_id": str(e.id) if e.kind.value == "GRANTED" else None,
                "event_id": str(e.id),
                "purpose": e.purpose,
                "change": e.kind.value,
                "method": e.method.value if e.method else None,
                "notice_version": e.notice_version,
                "channel": e.channel,
                "by": e.actor_kind.value.lower(),
                "at": _iso(e.occurred_at),
                "expires_at": _iso(e.expires_at),
            }
            for e in history
        ],
        "notices": [
            {
                "field": n.field,
                "old_value": _text(n.old_value),
                "new_value": _text(n.new_value),
                "source": n.source,
                "changed_at": _iso(n.changed_at),
                "due_at": _iso(n.due_at),
                "delivered_at": _iso(n.delivered_at),
            }
            for n in await fetch_notices(connection, member_id, deliver=True, now=now)
        ],
        "objections": [
            {
                "purpose": o.purpose,
                "reason": o.reason,
                "objected_at": _iso(o.objected_at),
                "lifted_at": _iso(o.lifted_at),
            }
            for o in await fetch_objections(connection, member_id)
        ],
        "access_log": accesses,
        "purposes": [
            {
                "key": p.key,
                "legal_basis": p.legal_basis.value,
                "title": {"nb": p.title.nb, "en": p.title.en},
                "description": {"nb": p.description.nb, "en": p.description.en},
                "notice_version": p.notice_version,
            }
            for p in purposes
        ],
    }
