"""Consent storage: the append-only history, and the current state derived from it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import models
from gateway.domain import ConsentEventKind, ConsentMethod
from gateway.policy import ConsentState


async def fetch_consent_states(
    connection: AsyncConnection, member_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, ConsentState]]:
    """member → purpose → the newest consent event, for all purposes, in one statement.

    Read in the caller's transaction, never from a cache: a withdrawal counts from the next request.
    """
    if not member_ids:
        return {}
    e = models.ConsentEvent
    newest = (
        select(
            e.member_id,
            e.purpose_key,
            e.kind,
            e.id,
            e.method,
            e.notice_version,
            e.occurred_at,
            e.expires_at,
        )
        .where(e.member_id.in_(list(member_ids)))
        .ext(distinct_on(e.member_id, e.purpose_key))
        .order_by(e.member_id, e.purpose_key, e.seq.desc())
    )
    states: dict[uuid.UUID, dict[str, ConsentState]] = {}
    for row in await connection.execute(newest):
        kind = ConsentEventKind(row.kind)
        states.setdefault(row.member_id, {})[row.purpose_key] = ConsentState(
            kind=kind,
            grant_id=row.id if kind is ConsentEventKind.GRANTED else None,
            method=ConsentMethod(row.method) if row.method else None,
            notice_version=row.notice_version,
            expires_at=row.expires_at,
            changed_at=row.occurred_at,
        )
    return states
