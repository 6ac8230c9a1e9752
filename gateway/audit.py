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

    def _values(self, record: AccessRecord, actor: dict[str, Any]) -> tuple[Any, ...]:
        """One event's values, in the order of the INSERT below."""
        return (
            self.now,
            self.request_id,
            record.operation,
            actor["actor_kind"],
            actor.get("client_id"),
            actor.get("actor_member_id"),
            record.member_id,
            # The declared purpose is recorded as sent, cut to the column's size.
            record.purpose[:64] if record.purpose is not None else None,
            record.legal_basis.value if record.legal_basis else None,
            record.outcome.value,
            # Text arrays cannot hold arrays: each event's field lists travel as one JSON text.
            json.dumps(list(record.fields_requested)),
            json.dumps(list(record.fields_released)),
            json.dumps(dict(record.fields_withheld)),
            json.dumps([str(c) for c in record.consent_ids]),
            json.dumps(dict(record.details), default=str),
        )

    async def flush(self, connection: AsyncConnection) -> int:
        """Write the held events in one statement; returns how many."""
        count = len(self.records)
        if count:
            actor = _actor(self.principal)
            columns = zip(*(self._values(record, actor) for record in self.records), strict=True)
            await db.execute(connection, _INSERT, *(list(column) for column in columns))
        self.records.clear()
        return count


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
