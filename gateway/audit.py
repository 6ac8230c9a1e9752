"""The audit writer: one access event per member touched, written with the operation's transaction.

Resolvers record what the access decision released and withheld; the HTTP endpoint flushes the
operation's events in one multi-row INSERT just before it commits. If that INSERT or the commit
fails, the endpoint answers AUDIT_UNAVAILABLE and sends no member data (fail closed).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import db
from gateway.auth import Anonymous, ClientPrincipal, MemberPrincipal, Principal, SystemPrincipal
from gateway.domain import AccessOutcome, ActorKind, ErrorCode, LegalBasis


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One access event, before it is written."""

    operation: str
    member_id: uuid.UUID | None
    purpose: str | None
    legal_basis: LegalBasis | None
    outcome: AccessOutcome
    fields_requested: tuple[str, ...] = ()
    fields_released: tuple[str, ...] = ()
    fields_withheld: Mapping[str, str] = field(default_factory=dict)
    consent_ids: tuple[uuid.UUID, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


def outcome_of(released: Iterable[str], withheld: Mapping[str, Any]) -> AccessOutcome:
    """RELEASED when nothing was withheld, DENIED when nothing was released, else PARTIAL."""
    if not withheld:
        return AccessOutcome.RELEASED
    return AccessOutcome.PARTIAL if any(True for _ in released) else AccessOutcome.DENIED


def _actor(principal: Principal) -> dict[str, Any]:
    if isinstance(principal, ClientPrincipal):
        return {"actor_kind": ActorKind.CLIENT.value, "client_id": principal.id}
    if isinstance(principal, MemberPrincipal):
        return {"actor_kind": ActorKind.MEMBER.value, "actor_member_id": principal.member_id}
    if isinstance(principal, SystemPrincipal):
        return {"actor_kind": ActorKind.SYSTEM.value}
    assert isinstance(principal, Anonymous)
    return {"actor_kind": ActorKind.ANONYMOUS.value}


class AuditTrail:
    """The access events of one operation, held until the endpoint flushes them."""

    def __init__(self, *, request_id: str, principal: Principal, now: dt.datetime) -> None:
        self.request_id = request_id
        self.principal = principal
        self.now = now
        self.records: list[AccessRecord] = []

    def record(self, record: AccessRecord) -> None:
        self.records.append(record)

    def denied(
        self,
        *,
        operation: str,
        member_ids: Iterable[uuid.UUID],
        purpose: str | None,
        code: ErrorCode,
        fields: Iterable[str],
        legal_basis: LegalBasis | None = None,
    ) -> None:
        """Record a refused attempt on each targeted member: every requested field withheld."""
        requested = tuple(sorted(fields))
        for member_id in member_ids:
            self.record(
                AccessRecord(
                    operation=operation,
                    member_id=member_id,
                    purpose=purpose,
                    legal_basis=legal_basis,
                    outcome=AccessOutcome.NOT_FOUND
                    if code is ErrorCode.NOT_FOUND
                    else AccessOutcome.DENIED,
                    fields_requested=requested,
                    fields_withheld=dict.fromkeys(requested, code.value),
                    details={"reason": code.value},
                )
            )

    def rows(self) -> list[dict[str, Any]]:
        actor = _actor(self.principal)
        return [
            {
                "occurred_at": self.now,
                "request_id": self.request_id,
                "operation": r.operation,
                **actor,
                "member_id": r.member_id,
                # The declared purpose is recorded as sent, cut to the column's size.
                "purpose": r.purpose[:64] if r.purpose is not None else None,
                "legal_basis": r.legal_basis.value if r.legal_basis else None,
                "outcome": r.outcome.value,
                "fields_requested": list(r.fields_requested),
                "fields_released": list(r.fields_released),
                "fields_withheld": dict(r.fields_withheld),
                "consent_ids": list(r.consent_ids),
                "details": dict(r.details),
            }
            for r in self.records
        ]

    async def flush(self, connection: AsyncConnection) -> int:
        """Write the held events in one statement; returns how many."""
        rows = self.rows()
        if rows:
            columns: dict[str, list[Any]] = {
                name: [row.get(name) for row in rows] for name in _INSERT_COLUMNS
            }
            columns["fields_withheld"] = [json.dumps(v) for v in columns["fields_withheld"]]
            columns["details"] = [json.dumps(v, default=str) for v in columns["details"]]
            # Text arrays cannot hold arrays: each row's field lists travel as one JSON text.
            for name in ("fields_requested", "fields_released", "consent_ids"):
                columns[name] = [json.dumps([str(x) for x in v]) for v in columns[name]]
            await db.execute(connection, _INSERT, *(columns[name] for name in _INSERT_COLUMNS))
        self.records.clear()
        return len(rows)


_INSERT_COLUMNS = (
    "occurred_at",
    "request_id",
    "operation",
    "actor_kind",
    "client_id",
    "actor_member_id",
    "member_id",
    "purpose",
    "legal_basis",
    "outcome",
    "fields_requested",
    "fields_released",
    "fields_withheld",
    "consent_ids",
    "details",
)
# Raw SQL because this runs on every request: one statement over arrays (unnest) for any number of
# events, prepared once per connection, with no bind-parameter limit.
_INSERT = """
    INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, client_id,
        actor_member_id, member_id, purpose, legal_basis, outcome, fields_requested,
        fields_released, fields_withheld, consent_ids, details)
    SELECT t.occurred_at, t.request_id, t.operation, t.actor_kind, t.client_id,
        t.actor_member_id, t.member_id, t.purpose, t.legal_basis, t.outcome,
        ARRAY(SELECT jsonb_array_elements_text(CAST(t.requested AS jsonb))),
        ARRAY(SELECT jsonb_array_elements_text(CAST(t.released AS jsonb))),
        CAST(t.withheld AS jsonb),
        ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(t.consents AS jsonb)) AS uuid)),
        CAST(t.details AS jsonb)
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                $7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::text[], $15::text[])
        AS t(occurred_at, request_id, operation, actor_kind, client_id, actor_member_id, member_id,
             purpose, legal_basis, outcome, requested, released, withheld, consents, details)
"""
