"""Reading the access log for auditors: filtered pages, newest first; the transparency report."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import AccessOutcome
from gateway.errors import BadUserInput
from gateway.store import models

MAX_PAGE = 500
_ENTRY_COLUMNS = models.ACCESS_EVENT_COLUMNS


@dataclass(frozen=True, slots=True)
class LogFilter:
    member_id: uuid.UUID | None = None
    client_id: uuid.UUID | None = None
    purpose: str | None = None
    outcome: AccessOutcome | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    request_id: str | None = None
    operation: str | None = None
    # The member who acted (their own `me` views and changes, or an attempt through their token).
    acting_member_id: uuid.UUID | None = None
    # With member_id: True, only the member's own accesses (their `me` views, their changes);
    # False, only everyone else's; None, both.
    by_the_member: bool | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    occurred_at: dt.datetime
    request_id: str
    operation: str
    actor_kind: str
    client_id: uuid.UUID | None
    client_name: str | None
    client_role: str | None
    actor_member_id: uuid.UUID | None
    member_id: uuid.UUID | None
    purpose: str | None
    legal_basis: str | None
    outcome: str
    fields_requested: list[str]
    fields_released: list[str]
    fields_withheld: dict[str, str]
    consent_ids: list[uuid.UUID]
    # What the operation recorded beside the fields (a refusal's reason, purged fields, an
    # export's range): names and codes, never a member's values.
    details: dict[str, Any]
    # Where it sits in the log's signed tree, with its inclusion proof, when asked for
    # (gateway/audit/transparency.py: EventSeal).
    seal: Any = None

    @property
    def cursor(self) -> str:
        return encode_cursor(self.occurred_at, self.id)

    @property
    def actor_label(self) -> str:
        """Who acted, as the member whose data it was is told: the app's name, `you`, `another
        member` (an attempt through another member's token: the other member is never named to
        them; auditors see `actor_member_id`), or `system`."""
        if self.client_name:
            return self.client_name
        if self.actor_kind == "MEMBER":
            return "you" if self.actor_member_id == self.member_id else "another member"
        return self.actor_kind.lower()


@dataclass(frozen=True, slots=True)
class LogPage:
    entries: list[LogEntry]
    has_next_page: bool


def encode_cursor(occurred_at: dt.datetime, event_id: int) -> str:
    return base64.urlsafe_b64encode(f"{occurred_at.isoformat()}|{event_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        stamp, _, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return dt.datetime.fromisoformat(stamp), int(event_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput("`after` is not a cursor this log gave out.", argument="after") from None


async def fetch_page(
    connection: AsyncConnection, where: LogFilter, *, first: int, after: str | None
) -> LogPage:
    """One page of the log, newest first, keyset-paginated by (occurred_at, id)."""
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput(f"`first` is from 1 to {MAX_PAGE}.", argument="first")
    e, c = models.AccessEvent, models.Client
    query = select(
        *(getattr(e, name) for name in _ENTRY_COLUMNS),
        c.name.label("client_name"),
        c.role.label("client_role"),
    ).outerjoin(c, c.id == e.client_id)
    conditions = []
    if where.member_id is not None:
        conditions.append(e.member_id == where.member_id)
        if where.by_the_member is True:
            conditions.append(e.actor_member_id == where.member_id)
        elif where.by_the_member is False:
            conditions.append(e.actor_member_id.is_distinct_from(where.member_id))
    if where.client_id is not None:
        conditions.append(e.client_id == where.client_id)
    if where.purpose is not None:
        conditions.append(e.purpose == where.purpose)
    if where.outcome is not None:
        conditions.append(e.outcome == where.outcome.value)
    if where.start is not None:
        conditions.append(e.occurred_at >= where.start)
    if where.end is not None:
        conditions.append(e.occurred_at < where.end)
    if where.request_id is not None:
        conditions.append(e.request_id == where.request_id)
    if where.operation is not None:
        conditions.append(e.operation == where.operation)
    if where.acting_member_id is not None:
        conditions.append(e.actor_member_id == where.acting_member_id)
    if after is not None:
        stamp, event_id = decode_cursor(after)
        conditions.append(or_(e.occurred_at < stamp, and_(e.occurred_at == stamp, e.id < event_id)))
    rows = (
        await connection.execute(
            query.where(*conditions).order_by(e.occurred_at.desc(), e.id.desc()).limit(first + 1)
        )
    ).all()
    entries = [LogEntry(**row._mapping) for row in rows[:first]]
    return LogPage(entries, has_next_page=len(rows) > first)


@dataclass
class TransparencyReport:
    start: dt.datetime
    end: dt.datetime
    accesses: int = 0
    by_purpose: Counter[str] = field(default_factory=Counter)
    by_client: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    withheld_reasons: Counter[str] = field(default_factory=Counter)
    consents_granted: Counter[str] = field(default_factory=Counter)
    consents_withdrawn: Counter[str] = field(default_factory=Counter)
    consents_expired: Counter[str] = field(default_factory=Counter)
    enrichment_records: int = 0
    cleansing_records: int = 0
    objections: int = 0
    notices_overdue: int = 0


async def transparency_report(
    connection: AsyncConnection, *, start: dt.datetime, end: dt.datetime
) -> TransparencyReport:
    """What happened to members' data in [start, end): accesses by purpose, client and outcome,
    why fields were withheld, consent changes, enrichment, cleansing, objections, overdue
    notices."""
    report = TransparencyReport(start, end)
    span = {"start": start, "end": end}
    in_span = "occurred_at >= :start AND occurred_at < :end"

    async def tally(sql: str) -> Counter[str]:
        return Counter({str(k): int(v) for k, v in await connection.execute(text(sql), span)})

    report.by_purpose = await tally(
        f"SELECT coalesce(purpose, '(none)'), count(*) FROM access_events WHERE {in_span} "  # noqa: S608  # constant text
        "GROUP BY 1"
    )
    report.by_client = await tally(
        "SELECT coalesce(c.name, lower(e.actor_kind)), count(*) FROM access_events e "
        "LEFT JOIN clients c ON c.id = e.client_id "
        "WHERE e.occurred_at >= :start AND e.occurred_at < :end GROUP BY 1"
    )
    report.by_outcome = await tally(
        f"SELECT outcome, count(*) FROM access_events WHERE {in_span} GROUP BY 1"  # noqa: S608
    )
    report.accesses = sum(report.by_outcome.values())
    report.withheld_reasons = await tally(
        "SELECT w.value #>> '{}', count(*) FROM access_events e, "
        "jsonb_each(e.fields_withheld) AS w "
        "WHERE e.occurred_at >= :start AND e.occurred_at < :end GROUP BY 1"
    )
    for kind, counter in (
        ("GRANTED", report.consents_granted),
        ("WITHDRAWN", report.consents_withdrawn),
        ("EXPIRED", report.consents_expired),
    ):
        counter.update(
            await tally(
                f"SELECT purpose_key, count(*) FROM consent_events WHERE kind = '{kind}' "  # noqa: S608
                f"AND {in_span} GROUP BY 1"
            )
        )
    # Counted from the period's access events, which are never rewritten, and not from the
    # rows as they are now: a purge, an erasure or a later correction must not change the report
    # of a closed period. Enrichment counts the values written, cleansing the corrections,
    # objections the ones newly made.
    written = await connection.execute(
        text(
            "SELECT count(*) FILTER (WHERE operation = 'recordCleansing'), "  # noqa: S608  # constant text
            "count(*) FILTER (WHERE operation = 'objectToProcessing'), "
            "coalesce(sum(cardinality(fields_released)) FILTER (WHERE operation IN "
            "('recordEnrichment', 'enrichImport')), 0) FROM access_events "
            f"WHERE outcome = 'WRITTEN' AND {in_span} AND operation IN "
            "('recordEnrichment', 'enrichImport', 'recordCleansing', 'objectToProcessing')"
        ),
        span,
    )
    cleansed, objected, enriched = written.one()
    report.enrichment_records = int(enriched)
    report.cleansing_records = int(cleansed)
    report.objections = int(objected)
    n = models.MemberNotice
    report.notices_overdue = int(
        await connection.scalar(
            select(func.count()).where(n.delivered_at.is_(None), n.due_at < end)
        )
        or 0
    )
    return report


def report_document(report: TransparencyReport) -> dict[str, Any]:
    """The report as plain data (for JSON, the HTML page and the GraphQL type)."""
    return {
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "accesses": report.accesses,
        "by_purpose": dict(report.by_purpose.most_common()),
        "by_client": dict(report.by_client.most_common()),
        "by_outcome": dict(report.by_outcome.most_common()),
        "withheld_reasons": dict(report.withheld_reasons.most_common()),
        "consents_granted": dict(report.consents_granted.most_common()),
        "consents_withdrawn": dict(report.consents_withdrawn.most_common()),
        "consents_expired": dict(report.consents_expired.most_common()),
        "enrichment_records": report.enrichment_records,
        "cleansing_records": report.cleansing_records,
        "objections": report.objections,
        "notices_overdue": report.notices_overdue,
    }
