"""The audit writer: one access event per member touched, written with the operation's transaction.

Resolvers record what the access decision released and withheld; the HTTP endpoint flushes the
operation's events in one multi-row INSERT just before it commits. If that INSERT or the commit
fails, the endpoint answers AUDIT_UNAVAILABLE and sends no member data (fail closed).
"""

from __future__ import annotations

import collections
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.audit.sealing import event_template, template_hash
from gateway.domain import (
    AccessOutcome,
    ActorKind,
    Anonymous,
    ClientPrincipal,
    ErrorCode,
    LegalBasis,
    MemberPrincipal,
    Principal,
    SystemPrincipal,
)
from gateway.store.db import Raw


# Not frozen: made per member by a profile read (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
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


def actor_columns(principal: Principal) -> dict[str, Any]:
    """The actor columns of an event made by `principal`."""
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
        # Events of this operation already written by the statement that read the data
        # (gateway.records.set_reads), by (purpose, outcome): for the metrics, not to write.
        self.written: collections.Counter[tuple[str | None, str]] = collections.Counter()

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
            self.refused(
                operation=operation,
                member_id=member_id,
                code=code,
                purpose=purpose,
                legal_basis=legal_basis,
                fields=requested,
            )

    def refused(
        self,
        *,
        operation: str,
        member_id: uuid.UUID | None,
        code: ErrorCode,
        purpose: str | None = None,
        legal_basis: LegalBasis | None = None,
        fields: tuple[str, ...] = (),
    ) -> None:
        """Record one refused attempt (on a member, or on no member in particular): NOT_FOUND or
        DENIED, with the reason, every requested field withheld."""
        self.record(
            AccessRecord(
                operation=operation,
                member_id=member_id,
                purpose=purpose,
                legal_basis=legal_basis,
                outcome=AccessOutcome.NOT_FOUND
                if code is ErrorCode.NOT_FOUND
                else AccessOutcome.DENIED,
                fields_requested=fields,
                fields_withheld=dict.fromkeys(fields, code.value),
                details={"reason": code.value},
            )
        )

    async def flush(self, connection: Raw) -> int:
        """Write the held events in one statement on `connection` (in its transaction, if it is
        in one); returns how many."""
        return await write_events(connection, [self])


async def write_events(
    connection: Raw, trails: Sequence[AuditTrail], *, ids: Sequence[int] | None = None
) -> int:
    """Write the held events of one or more operations in one statement; returns how many.

    With `ids` (one per event, taken from the events' sequence by the caller) each event is
    written with that id and its leaf hash, computed here from the values it is written with, so
    the sealer need not read the event back (gateway.audit.sealer). An event whose JSON holds a
    value PostgreSQL may write back differently (a float) is left for the sealer to hash.

    The events of one operation mostly differ only in their member and consent: a hundred-member
    read is a hundred events in a handful of classes (same operation, purpose, outcome, fields).
    So each class travels once, and each event as its member, its class and its consents' place
    in one flat array: typed arrays PostgreSQL reads without parsing a JSON document per event
    (measured: the insert was a hundred-member read's largest database cost). A class belongs to
    one operation (its time, request id and actor), so the events of concurrent reads go in
    together (gateway.audit.group_commit).
    """
    batch = _Batch(iter(ids) if ids is not None else None)
    for trail in trails:
        batch.add(trail)
    if not batch.count:
        return 0
    if ids is None and batch.count == 1:
        await connection.execute(_INSERT_ONE, *batch.single())
    elif ids is None:
        await connection.execute(_INSERT, *batch.arguments())
    else:
        await connection.execute(
            _INSERT_HASHED, *batch.arguments(), batch.ids, b"".join(batch.hashes), NO_HASH
        )
    for trail in trails:
        trail.records.clear()
    return batch.count


class _Batch:
    """The statement's arguments, built one operation at a time."""

    def __init__(self, ids: Iterator[int] | None = None) -> None:
        self._next_id = ids
        # With ids: each event's id and leaf hash (NO_HASH for one left to the sealer).
        self.ids: list[int] = []
        self.hashes: list[bytes] = []
        self.count = 0
        self.member_ids: list[uuid.UUID | None] = []
        self.class_of: list[int] = []
        self.firsts: list[int] = []
        self.lasts: list[int] = []
        self.consents: list[uuid.UUID] = []
        self.columns: list[list[Any]] = [[] for _ in range(13)]
        # The same lists recur across the events (and often the operations) of a batch.
        self.arrays: dict[tuple[Any, ...], str] = {}
        # With ids: each class's canonical JSON around its events' own values (None: the class's
        # JSON columns hold a float, and its events are left to the sealer).
        self.templates: list[tuple[bytes, bytes, bytes, bytes] | None] = []

    def add(self, trail: AuditTrail) -> None:
        actor = actor_columns(trail.principal)
        operation = (
            trail.now,
            trail.request_id,
            actor["actor_kind"],
            actor.get("client_id"),
            actor.get("actor_member_id"),
        )
        classes: dict[tuple[Any, ...], int] = {}
        for record in trail.records:
            # Mappings by identity (one decision's are shared by its members' events), and every
            # empty one alike.
            withheld, details = record.fields_withheld, record.details
            key = (
                record.operation,
                record.purpose,
                record.legal_basis,
                record.outcome,
                record.fields_requested,
                record.fields_released,
                id(withheld) if withheld else None,
                id(details) if details else None,
            )
            number = classes.get(key)
            if number is None:
                number = classes[key] = len(self.columns[0]) + 1
                values = (*operation, *_class(record, self.arrays))
                for column, value in zip(self.columns, values, strict=True):
                    column.append(value)
            self.member_ids.append(record.member_id)
            self.class_of.append(number)
            self.firsts.append(len(self.consents) + 1)
            self.consents.extend(record.consent_ids)
            self.lasts.append(len(self.consents))
            if self._next_id is not None:
                self._hash(next(self._next_id), number - 1, record)
        self.count += len(trail.records)

    def _hash(self, event_id: int, number: int, record: AccessRecord) -> None:
        """The event's leaf hash from the values it is written with, as the sealer would compute
        it from the row (gateway.audit.sealing.event_hash over the same columns): from its
        class's template (made with the class's first event), filled with its id, member and
        consents."""
        self.ids.append(event_id)
        if number == len(self.templates):
            self.templates.append(self._template(event_id, number, record))
        template = self.templates[number]
        if template is None:
            self.hashes.append(NO_HASH)
        else:
            self.hashes.append(
                template_hash(template, event_id, record.member_id, record.consent_ids)
            )

    def _template(
        self, event_id: int, number: int, record: AccessRecord
    ) -> tuple[bytes, bytes, bytes, bytes] | None:
        c = self.columns
        withheld, details = c[11][number], c[12][number]
        if not (_plain(withheld) and _plain(details)):
            return None  # left to the sealer
        return event_template(
            {
                "id": event_id,
                "occurred_at": c[0][number],
                "request_id": c[1][number],
                "actor_kind": c[2][number],
                "client_id": c[3][number],
                "actor_member_id": c[4][number],
                "operation": c[5][number],
                "purpose": c[6][number],
                "legal_basis": c[7][number],
                "outcome": c[8][number],
                "member_id": record.member_id,
                # The class's lists as the columns store them (text[]).
                "fields_requested": [str(item) for item in record.fields_requested],
                "fields_released": [str(item) for item in record.fields_released],
                "fields_withheld": withheld,
                "consent_ids": record.consent_ids,
                "details": details,
            }
        )

    def single(self) -> tuple[Any, ...]:
        """The arguments of _INSERT_ONE, for a batch of one event."""
        c = [column[0] for column in self.columns]
        return (*c[0:2], c[5], c[2], c[3], c[4], self.member_ids[0], *c[6:13], self.consents)

    def arguments(self) -> tuple[Any, ...]:
        return (
            self.member_ids,
            self.class_of,
            self.firsts,
            self.lasts,
            self.consents,
            *self.columns,
        )


def _class(record: AccessRecord, arrays: dict[tuple[Any, ...], str]) -> tuple[Any, ...]:
    """What the events of one class share besides their operation, as text PostgreSQL casts once
    per event."""
    return (
        record.operation,
        # The declared purpose is recorded as sent, cut to the column's size.
        record.purpose[:64] if record.purpose is not None else None,
        record.legal_basis.value if record.legal_basis else None,
        record.outcome.value,
        _array(record.fields_requested, arrays),
        _array(record.fields_released, arrays),
        _json(record.fields_withheld),
        _json(record.details),
    )


# In place of a hash the sealer is to compute (no leaf hash is 32 zero bytes).
NO_HASH = bytes(32)


def _plain(document: str) -> bool:
    """Whether a JSON text holds only values that come back from jsonb as they went in: no
    numbers but integers (jsonb keeps a number's digits, not its float spelling)."""
    return not any(digit in document for digit in "0123456789") or _no_floats(
        orjson.loads(document)
    )


def _no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(_no_floats(item) for item in value.values())
    if isinstance(value, list):
        return all(_no_floats(item) for item in value)
    return True


def _array(items: tuple[Any, ...], known: dict[tuple[Any, ...], str]) -> str:
    """A PostgreSQL array literal, every element quoted and escaped; the same lists recur in
    one operation (each member of a batch read asked the same fields), so each is built once."""
    found = known.get(items)
    if found is None:
        quoted = ('"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
        found = known[items] = "{" + ",".join(quoted) + "}"
    return found


def _json(value: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(value), default=_as_text).decode()


def _as_text(value: object) -> str:
    if isinstance(value, Mapping):  # a mappingproxy or another read-only mapping
        return orjson.dumps(dict(value)).decode()
    return str(value)


# Raw SQL because this runs on every request, prepared once per connection. $1-$4 are per event
# (its member, its class, the slice of $5 holding its consents); $6-$18 per class. Each class's
# lists and JSON are cast once, in the subquery (OFFSET 0 keeps the planner from pulling the casts
# up into the join, where they ran once an event: measured 1.43 against 1.27 ms of PostgreSQL
# CPU a 100-event insert, with the sort below left out as well).
_INSERT_BATCH = """
    INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, client_id,
        actor_member_id, member_id, purpose, legal_basis, outcome, fields_requested,
        fields_released, fields_withheld, consent_ids, details{more_columns})
    SELECT c.occurred_at, c.request_id, c.operation, c.actor_kind, c.client_id,
        c.actor_member_id, e.member_id, c.purpose, c.legal_basis, c.outcome,
        c.requested, c.released, c.withheld, ($5::uuid[])[e.first:e.last], c.details{more_values}
    FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[])
            WITH ORDINALITY AS e(member_id, class, first, last, n)
        JOIN (SELECT u.occurred_at, u.request_id, u.actor_kind, u.client_id, u.actor_member_id,
                     u.operation, u.purpose, u.legal_basis, u.outcome,
                     CAST(u.requested AS text[]) AS requested,
                     CAST(u.released AS text[]) AS released,
                     CAST(u.withheld AS jsonb) AS withheld,
                     CAST(u.details AS jsonb) AS details, u.k
              FROM unnest($6::timestamptz[], $7::text[], $8::text[], $9::uuid[], $10::uuid[],
                          $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                          $16::text[], $17::text[], $18::text[])
                  WITH ORDINALITY AS u(occurred_at, request_id, actor_kind, client_id,
                                       actor_member_id, operation, purpose, legal_basis, outcome,
                                       requested, released, withheld, details, k)
              OFFSET 0) AS c
        ON c.k = e.class
"""

# Ids from the sequence, taken as the rows come: in the events' order.
_INSERT = _INSERT_BATCH.format(more_columns="", more_values="") + "    ORDER BY e.n\n"

# Each event with its id ($19) and leaf hash ($20: 32 bytes an event, in order): the rows'
# order no longer matters, so they are not sorted.
_INSERT_HASHED = _INSERT_BATCH.format(
    more_columns=", id, leaf_hash",
    more_values=(
        ", ($19::bigint[])[e.n],\n"
        "        NULLIF(substring($20::bytea FROM (e.n::int - 1) * 32 + 1 FOR 32), $21::bytea)"
    ),
)

# One event (a write's, in its own transaction): the same values without the arrays and the join
# that serve a batch (measured: 204 against 293 us a single-event insert, client and server, 4 x
# 1,000 alternated).
_INSERT_ONE = """
    INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, client_id,
        actor_member_id, member_id, purpose, legal_basis, outcome, fields_requested,
        fields_released, fields_withheld, details, consent_ids)
    VALUES ($1::timestamptz, $2::text, $3::text, $4::text, $5::uuid, $6::uuid, $7::uuid,
        $8::text, $9::text, $10::text, CAST($11::text AS text[]), CAST($12::text AS text[]),
        CAST($13::text AS jsonb), CAST($14::text AS jsonb), $15::uuid[])
"""
