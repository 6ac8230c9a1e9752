"""Consent storage: the append-only history, and the current state derived from it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import (
    ActorKind,
    ConsentEventKind,
    ConsentMethod,
    ConsentState,
    MembershipStatus,
)
from gateway.records.locks import Hold
from gateway.store import models
from gateway.store.db import Raw

# The consent's state is the newest event of its (member, purpose): the view `consent_states`
# (migration 0004) is that rule's one definition, and every query below reads it.
CONSENT_STATES = table(
    "consent_states", *(column(c.name, c.type) for c in models.ConsentEvent.__table__.columns)
)
# The columns of a stored event as ConsentEventRecord holds them: all but the wording itself.
_RECORD_COLUMNS = tuple(c for c in models.ConsentEvent.__table__.columns if c.name != "evidence")
_COLUMNS = ", ".join(c.name for c in _RECORD_COLUMNS)
EVENT_COLUMNS = _COLUMNS  # what `event_of` reads

# Raw SQL: the request's hot path.
_CURRENT_STATES = (
    "SELECT member_id, purpose_key, kind, id, method, notice_version, occurred_at, expires_at "
    "FROM consent_states WHERE member_id = ANY($1::uuid[])"
)


async def fetch_consent_states(
    connection: Raw, member_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, ConsentState]]:
    """member → purpose → the newest consent event, for all purposes, in one statement.

    Read in the caller's transaction, never from a cache: a withdrawal counts from the next request.
    """
    if not member_ids:
        return {}
    states: dict[uuid.UUID, dict[str, ConsentState]] = {}
    for row in await connection.fetch(_CURRENT_STATES, list(member_ids)):
        kind = ConsentEventKind(row["kind"])
        states.setdefault(row["member_id"], {})[row["purpose_key"]] = ConsentState(
            kind=kind,
            grant_id=row["id"] if kind is ConsentEventKind.GRANTED else None,
            method=ConsentMethod(row["method"]) if row["method"] else None,
            notice_version=row["notice_version"],
            expires_at=row["expires_at"],
            changed_at=row["occurred_at"],
        )
    return states


@dataclass(frozen=True, slots=True)
class ConsentEventRecord:
    """One stored consent event, as a receipt or a history entry shows it."""

    id: uuid.UUID
    seq: int
    member_id: uuid.UUID
    purpose: str
    kind: ConsentEventKind
    method: ConsentMethod | None
    notice_version: str | None
    channel: str
    actor_kind: ActorKind
    captured_by_client_id: uuid.UUID | None
    evidence_sha256: str | None
    occurred_at: dt.datetime
    expires_at: dt.datetime | None
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who records a consent event: the member, an app client at a touchpoint, or the system."""

    kind: ActorKind
    client_id: uuid.UUID | None = None


def event_of(row: Any) -> ConsentEventRecord:
    """From an asyncpg record or a SQLAlchemy row's mapping."""
    return ConsentEventRecord(
        id=row["id"],
        seq=row["seq"],
        member_id=row["member_id"],
        purpose=row["purpose_key"],
        kind=ConsentEventKind(row["kind"]),
        method=ConsentMethod(row["method"]) if row["method"] else None,
        notice_version=row["notice_version"],
        channel=row["channel"],
        actor_kind=ActorKind(row["actor_kind"]),
        captured_by_client_id=row["captured_by_client_id"],
        evidence_sha256=row["evidence_sha256"],
        occurred_at=row["occurred_at"],
        expires_at=row["expires_at"],
        idempotency_key=row["idempotency_key"],
    )


async def lock_consent(
    connection: Raw, member_id: uuid.UUID, purpose: str, hold: Hold = Hold.SHARE
) -> MembershipStatus | None:
    """Hold the member, then serialise changes to one (member, purpose) until this transaction
    ends; returns the member's membership status as it is now, None if no member has this id.

    The member first, as every write path takes it (gateway.records.locks): closing and erasing
    hold the member's row exclusively, so a change that comes while one of them runs waits for
    it and then reads the status it committed (CLOSED, or no member at all), never the status of
    a snapshot taken before it waited. With the consent lock held from before the insert until
    the commit, the order of `seq` is the order of commits: the newest event by `seq` is the
    last one committed.

    A change that may purge enriched values (a withdrawal, an expiry) holds the member at CHANGE,
    so that two of them for different purposes of one member apply one after the other: each
    decides what no consent covers any more after the other has committed, never both before.
    """
    [row] = await connection.fetch(_LOCK[hold], member_id, f"consent:{member_id}:{purpose}")
    status = row["membership_status"]
    return MembershipStatus(status) if status is not None else None


# Raw SQL from here to append_event: each consent change runs these (measured: SQLAlchemy's
# statement building was most of a grant's time).
# One round trip, in the lock order: the member's row (FOR KEY SHARE, in a materialized CTE that
# the join reads before it projects its row), then the advisory lock (projected after the join).
# A row lock re-reads a row changed by a transaction it waited for (READ COMMITTED's recheck), so
# the status is the committed one, not the statement snapshot's.
_LOCK = {
    hold: "WITH m AS MATERIALIZED ("  # noqa: S608  # the lock clause is one of Hold's
    f"SELECT membership_status FROM members WHERE id = $1 {hold.value}) "
    "SELECT m.membership_status, pg_advisory_xact_lock(hashtextextended($2, 0)) "
    "FROM (VALUES (1)) AS one (x) LEFT JOIN m ON true"
    for hold in Hold
}
# The interpolated part is the model's column list, never input.
_BY_KEY = (
    f"SELECT {_COLUMNS} FROM consent_events "  # noqa: S608
    "WHERE member_id = $1 AND purpose_key = $2 AND idempotency_key = $3"
)
_CURRENT = (
    f"SELECT {_COLUMNS} FROM consent_states "  # noqa: S608
    "WHERE member_id = $1 AND purpose_key = $2"
)
_APPEND = (
    "INSERT INTO consent_events (member_id, purpose_key, kind, method, notice_version, channel, "  # noqa: S608
    "actor_kind, captured_by_client_id, evidence, evidence_sha256, occurred_at, expires_at, "
    "idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
    f"RETURNING {_COLUMNS}"
)


_WITHDRAW_IF_IN_FORCE = (
    "INSERT INTO consent_events (member_id, purpose_key, kind, channel, actor_kind, "  # noqa: S608
    "captured_by_client_id, occurred_at, idempotency_key) "
    "SELECT $1::uuid, $2::text, 'WITHDRAWN', $3::text, $4::text, $5::uuid, $6::timestamptz, "
    "$7::text WHERE EXISTS (SELECT 1 FROM consent_states WHERE member_id = $1 "
    "AND purpose_key = $2 AND kind = 'GRANTED' AND (expires_at IS NULL OR expires_at > $6)) "
    f"RETURNING {_COLUMNS}"
)


async def withdraw_if_in_force(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purpose: str,
    actor: Actor,
    channel: str,
    occurred_at: dt.datetime,
    idempotency_key: str | None = None,
) -> ConsentEventRecord | None:
    """Append a withdrawal if a consent is in force at `occurred_at` (its newest event a grant
    that has not expired), in one statement; None when there was nothing to withdraw. Run it
    under lock_consent, so that the newest event cannot change between the check and the insert.
    """
    rows = await connection.fetch(
        _WITHDRAW_IF_IN_FORCE,
        member_id,
        purpose,
        channel,
        actor.kind.value,
        actor.client_id,
        occurred_at,
        idempotency_key,
    )
    return event_of(rows[0]) if rows else None


_GRANT = (
    f"SELECT {_COLUMNS} FROM consent_events "  # noqa: S608
    "WHERE id = $1 AND member_id = $2 AND kind = 'GRANTED'"
)


async def fetch_grant(
    connection: Raw, member_id: uuid.UUID, receipt_id: uuid.UUID
) -> ConsentEventRecord | None:
    """The grant a receipt id names, if it is this member's."""
    rows = await connection.fetch(_GRANT, receipt_id, member_id)
    return event_of(rows[0]) if rows else None


async def client_name(connection: Raw, client_id: uuid.UUID) -> str:
    """The name of the client that captured a consent (for its receipt)."""
    rows = await connection.fetch("SELECT name FROM clients WHERE id = $1", client_id)
    return str(rows[0]["name"]) if rows else "unknown"


async def event_by_idempotency_key(
    connection: Raw, member_id: uuid.UUID, purpose: str, key: str
) -> ConsentEventRecord | None:
    rows = await connection.fetch(_BY_KEY, member_id, purpose, key)
    return event_of(rows[0]) if rows else None


async def current_event(
    connection: Raw, member_id: uuid.UUID, purpose: str
) -> ConsentEventRecord | None:
    rows = await connection.fetch(_CURRENT, member_id, purpose)
    return event_of(rows[0]) if rows else None


async def append_event(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purpose: str,
    kind: ConsentEventKind,
    actor: Actor,
    channel: str,
    occurred_at: dt.datetime,
    method: ConsentMethod | None = None,
    notice_version: str | None = None,
    expires_at: dt.datetime | None = None,
    evidence: str | None = None,
    evidence_sha256: str | None = None,
    idempotency_key: str | None = None,
) -> ConsentEventRecord:
    """Append one event to the history. Never updates or deletes. Does not commit."""
    [row] = await connection.fetch(
        _APPEND,
        member_id,
        purpose,
        kind.value,
        method.value if method else None,
        notice_version,
        channel,
        actor.kind.value,
        actor.client_id,
        evidence,
        evidence_sha256,
        occurred_at,
        expires_at,
        idempotency_key,
    )
    return event_of(row)


async def fetch_history(
    connection: AsyncConnection, member_id: uuid.UUID
) -> list[ConsentEventRecord]:
    """Every consent event of a member, oldest first by the time of the change (an import or
    a back-dated record may be inserted after later changes; `seq`, the order of insertion,
    breaks ties)."""
    e = models.ConsentEvent
    rows = await connection.execute(
        select(*_RECORD_COLUMNS).where(e.member_id == member_id).order_by(e.occurred_at, e.seq)
    )
    return [event_of(row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class Expiring:
    member_id: uuid.UUID
    purpose: str
    consent_id: uuid.UUID
    expires_at: dt.datetime


async def fetch_expiring(
    connection: AsyncConnection, *, now: dt.datetime, within: dt.timedelta
) -> list[Expiring]:
    """Grants still in force that lapse within `within`: the members to ask for renewal."""
    newest = CONSENT_STATES
    rows = await connection.execute(
        select(newest.c.member_id, newest.c.purpose_key, newest.c.id, newest.c.expires_at)
        .where(
            newest.c.kind == ConsentEventKind.GRANTED.value,
            newest.c.expires_at > now,
            newest.c.expires_at <= now + within,
        )
        .order_by(newest.c.expires_at)
    )
    return [Expiring(r.member_id, r.purpose_key, r.id, r.expires_at) for r in rows]


async def fetch_lapsed(connection: AsyncConnection, *, now: dt.datetime) -> list[Expiring]:
    """Grants that are the newest event of their (member, purpose) but past their expiry."""
    newest = CONSENT_STATES
    rows = await connection.execute(
        select(newest.c.member_id, newest.c.purpose_key, newest.c.id, newest.c.expires_at).where(
            newest.c.kind == ConsentEventKind.GRANTED.value, newest.c.expires_at <= now
        )
    )
    return [Expiring(r.member_id, r.purpose_key, r.id, r.expires_at) for r in rows]
