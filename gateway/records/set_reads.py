"""The set-based profile read: many members decided, shaped and audited in one statement.

For `member`/`members` of leaf fields (the shape gateway.web.fastpath plans), PostgreSQL does
what Python did once per member: it decides (the policy's SQL, gateway.access.sql), writes each
member's access event with its RFC 6962 leaf hash (a data-modifying CTE), and writes each
member's answer as JSON text in the order and under the keys the operation asked. Python only
splices the answers into the response and reports withheld fields. The statement runs alone in
autocommit: it commits, events included, before its rows come back (fail closed), and an event
whose member's row is not returned cannot exist without the answer being withheld.

An event is what `resolvers.members.read_members` records for the same read (the fast path's
differential test, tests/gateway/web/test_fastpath.py, compares both paths' answers and events).
Its leaf hash is `gateway.audit.sealing.template_hash` computed in SQL: the event's class (its
outcome, fields and reasons, the same for every member decided alike) is cut into a template by
`event_template` here, and the statement fills in each event's consents, id and member.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from gateway.access import sql as decision_sql
from gateway.access.policy import basis_codes
from gateway.audit.sealing import event_template
from gateway.audit.trail import outcome_of
from gateway.domain import Category, EnrichedField, ErrorCode, Purpose
from gateway.records.audiences import state_joins
from gateway.store.db import Raw

RELEASED = ""  # the class of members whose basis holds
NOT_FOUND = ErrorCode.NOT_FOUND.value


def _text(column: str) -> str:
    return f"coalesce(to_json({column})::text, 'null')"


def _string(value: str) -> str:
    """A jsonb value as a GraphQL String gives it (a string as it is, another scalar as text)."""
    return (
        f"CASE jsonb_typeof({value}) WHEN 'string' THEN ({value})::text "
        f"WHEN 'null' THEN 'null' ELSE coalesce(to_json({value} #>> '{{}}')::text, 'null') END"
    )


def _enriched(name: str) -> str:
    return f"(l.x -> {decision_sql.literal(name)})"


# Each leaf a member read may ask, as JSON text from the row (m: members, e.x: enriched values).
_VALUES: dict[str, str] = {
    "first_name": _text("l.first_name"),
    "last_name": _text("l.last_name"),
    "email": _text("l.email"),
    "phone": _text("l.phone"),
    "tier": _text("l.tier"),
    "points": "coalesce(l.points::text, 'null')",
    "member_since": _text("l.member_since"),
    "membership_status": _text("l.membership_status"),
    "deceased": "coalesce(l.deceased::text, 'null')",
    "income_band": _string(_enriched("income_band")),
    "household_size": f"coalesce({_enriched('household_size')}::text, 'null')",
    "lifestyle_segment": _string(_enriched("lifestyle_segment")),
    "interests": f"coalesce({_enriched('interests')}::text, 'null')",
}
_ENRICHED_NAMES = frozenset(f.value for f in EnrichedField)


def answers(attribute: str | None) -> bool:
    """Whether the set read can answer this leaf (an attribute of the member view, or None for
    __typename)."""
    return attribute is None or attribute in ("id", "purpose") or attribute in _VALUES


@dataclass(frozen=True, slots=True)
class Leaf:
    key: str  # the response key
    attribute: str | None  # the view's attribute; None for __typename


@dataclass(frozen=True, slots=True)
class Actor:
    """Who reads and when: the columns every event of the read shares."""

    occurred_at: dt.datetime
    request_id: str
    operation: str
    actor_kind: str
    client_id: uuid.UUID | None
    actor_member_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Row:
    """One asked id's answer: its position, whether it exists, why its basis failed (None: it
    holds), its JSON text (None when it does not exist), and its event's outcome."""

    position: int
    found: bool
    code: str | None
    data: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class _Class:
    code: str
    outcome: str
    released: list[str]
    withheld: dict[str, str]
    details: dict[str, str]
    relies_on_consent: bool


def _classes(purpose: Purpose, fields: Mapping[str, Category]) -> list[_Class]:
    """The events a read can write, by the reason code that picks each (`decide`'s outcomes)."""
    requested = sorted(fields)
    in_purpose = sorted(n for n, c in fields.items() if c in purpose.categories)
    outside = {n: ErrorCode.CATEGORY_NOT_IN_PURPOSE.value for n in fields if n not in in_purpose}
    classes = []
    released_withheld = dict(sorted(outside.items()))
    classes.append(
        _Class(
            RELEASED,
            outcome_of(in_purpose, released_withheld).value,
            in_purpose,
            released_withheld,
            {},
            bool(in_purpose) and decision_sql.reads_consent(purpose),
        )
    )
    for code in basis_codes(purpose):
        if not in_purpose:
            # Nothing asked in the purpose: its basis is not even looked at (`decide`).
            classes.append(_Class(code.value, *_rest(classes[0])))
            continue
        withheld = dict(sorted({**outside, **dict.fromkeys(in_purpose, code.value)}.items()))
        classes.append(_Class(code.value, outcome_of((), withheld).value, [], withheld, {}, False))
    refused = dict.fromkeys(requested, NOT_FOUND)
    classes.append(
        _Class(NOT_FOUND, "NOT_FOUND", [], refused, {"reason": NOT_FOUND}, relies_on_consent=False)
    )
    return classes


def _rest(found: _Class) -> tuple[str, list[str], dict[str, str], dict[str, str], bool]:
    return found.outcome, found.released, found.withheld, found.details, found.relies_on_consent


def _template(
    actor: Actor, purpose: Purpose, requested: list[str], found: _Class
) -> tuple[bytes, bytes, bytes, bytes]:
    template = event_template(
        {
            "id": 0,
            "occurred_at": actor.occurred_at,
            "request_id": actor.request_id,
            "actor_kind": actor.actor_kind,
            "client_id": actor.client_id,
            "actor_member_id": actor.actor_member_id,
            "operation": actor.operation,
            "purpose": purpose.key[:64],
            "legal_basis": purpose.legal_basis.value,
            "outcome": found.outcome,
            "member_id": None,
            "fields_requested": requested,
            "fields_released": found.released,
            "fields_withheld": found.withheld,
            "consent_ids": [],
            "details": found.details,
        }
    )
    assert template is not None  # no value of a read's event can hold the cuts' NUL
    return template


def _data_sql(purpose: Purpose, leaves: Sequence[Leaf], in_purpose: frozenset[str]) -> str:
    """The member's answer (from `l`, a row of the read) as compact JSON text, its keys in the
    order asked (the first of a repeated key wins, as graphql-core answers it)."""
    parts: list[str] = []
    seen: set[str] = set()
    for leaf in leaves:
        if leaf.key in seen:
            continue
        seen.add(leaf.key)
        name = orjson.dumps(leaf.key).decode()
        if leaf.attribute is None:
            value = "'\"Member\"'"
        elif leaf.attribute == "id":
            value = "to_json(l.asked_id::text)::text"
        elif leaf.attribute == "purpose":
            value = decision_sql.literal(orjson.dumps(purpose.key).decode())
        elif leaf.attribute in in_purpose:
            value = f"CASE WHEN l.failed IS NULL THEN {_VALUES[leaf.attribute]} ELSE 'null' END"
        else:
            value = "'null'"
        parts.append(f"{decision_sql.literal(name + ':')} || {value}")
    if not parts:
        return "'{}'"
    return "'{' || " + " || ',' || ".join(parts) + " || '}'"


_AUDITED = """audited AS (
            INSERT INTO access_events (id, occurred_at, request_id, operation, actor_kind,
                client_id, actor_member_id, member_id, purpose, legal_basis, outcome,
                fields_requested, fields_released, fields_withheld, consent_ids, details,
                leaf_hash)
            SELECT v.event_id, $4::timestamptz, $5::text, $6::text, $7::text, $8::uuid,
                   $9::uuid, v.asked_id, p.purpose, $10::text, v.outcome, $11::text[],
                   v.released::text[], v.withheld::jsonb,
                   CASE WHEN v.relies THEN ARRAY[v.consent_id] ELSE '{}'::uuid[] END,
                   v.details::jsonb,
                   sha256('\\x00'::bytea || v.before_consents || convert_to(v.consents_json, 'UTF8')
                          || v.before_id || convert_to(v.event_id::text, 'UTF8')
                          || v.before_member || convert_to('"' || v.asked_id::text || '"', 'UTF8')
                          || v.tail)
            FROM events v CROSS JOIN p
            RETURNING id
        )
"""

# The same parameters, none written (PostgreSQL must still learn every parameter's type).
_NOT_AUDITED = """audited AS (
            SELECT event_id AS id FROM events,
                (SELECT $4::timestamptz, $5::text, $6::text, $7::text, $8::uuid, $9::uuid,
                        $10::text, $11::text[]) AS unused
        )
"""


def statement(
    purpose: Purpose,
    fields: Mapping[str, Category],
    leaves: Sequence[Leaf],
    *,
    audited: bool = True,
) -> str:
    """The read's statement (see `_statement`), made once per shape."""
    return _statement(purpose, tuple(fields.items()), tuple(leaves), audited)


@functools.lru_cache(maxsize=512)
def _statement(
    purpose: Purpose,
    asked: tuple[tuple[str, Category], ...],
    leaves: tuple[Leaf, ...],
    audited: bool,
) -> str:
    """The read's statement. $1 now, $2 the purpose, $3 the ids (in the order asked); the
    events' shared columns $4-$9 (time, request id, operation, actor kind, client, member actor);
    $10 legal basis, $11 fields requested; the classes $12-$21.

    `audited=False` leaves the INSERT out: only the benchmark's `tillit-unaudited` reference
    (bench/servers.py) asks for it, to show what the events cost; nothing that serves does."""
    state = decision_sql.State(now="p.now")
    failed = decision_sql.failure(purpose, state)
    in_purpose = frozenset(n for n, c in asked if c in purpose.categories)
    enriched = any(name in _ENRICHED_NAMES for name in in_purpose)
    enrichment = (
        "LEFT JOIN LATERAL (SELECT jsonb_object_agg(field, value) AS x FROM enrichment_records "
        "WHERE member_id = m.id) AS e ON true"
        if enriched
        else ""
    )
    member_columns = (
        "m.id, m.first_name, m.last_name, m.email, m.phone, m.tier, m.points, m.member_since, "
        "m.membership_status, m.deceased"
    )
    consent = "c.id" if decision_sql.reads_consent(purpose) else "NULL::uuid"
    data = _data_sql(purpose, leaves, in_purpose)
    audit = _AUDITED if audited else _NOT_AUDITED
    return f"""
        WITH p AS (SELECT $1::timestamptz AS now, $2::text AS purpose),
        looked AS MATERIALIZED (
            SELECT a.n, a.id AS asked_id, {member_columns},
                   {"e.x" if enriched else "NULL::jsonb AS x"},
                   CASE WHEN m.id IS NULL THEN '{NOT_FOUND}' ELSE ({failed}) END AS failed,
                   {consent} AS consent_id
            FROM p CROSS JOIN unnest($3::uuid[]) WITH ORDINALITY AS a(id, n)
            LEFT JOIN members m ON m.id = a.id
            {state_joins(purpose, "p.purpose")}
            {enrichment}
        ),
        classes AS (
            SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::text[],
                                 $16::text[], $17::bool[], $18::bytea[], $19::bytea[],
                                 $20::bytea[], $21::bytea[])
                AS k(code, outcome, released, withheld, details, relies, before_consents,
                     before_id, before_member, tail)
        ),
        events AS MATERIALIZED (
            SELECT nextval('access_events_id_seq') AS event_id, o.*
            FROM (SELECT l.*, k.*,
                         CASE WHEN k.relies THEN '["' || l.consent_id::text || '"]'
                              ELSE '[]' END AS consents_json
                  FROM looked l JOIN classes k ON k.code = coalesce(l.failed, '{RELEASED}')
                  ORDER BY l.n) AS o
        ),
{audit}        SELECT l.n, l.failed, l.outcome,
               CASE WHEN l.failed = '{NOT_FOUND}' THEN NULL ELSE {data} END AS data
        FROM events l JOIN audited a ON a.id = l.event_id
        ORDER BY l.n
    """


async def read_set(
    connection: Raw,
    *,
    purpose: Purpose,
    fields: Mapping[str, Category],
    leaves: Sequence[Leaf],
    ids: Sequence[uuid.UUID],
    now: dt.datetime,
    actor: Actor,
) -> list[Row]:
    """Decide, audit and answer `ids` (in order) in one statement; see the module docstring."""
    requested = sorted(fields)
    classes = _classes(purpose, fields)
    templates = [_template(actor, purpose, requested, k) for k in classes]
    rows = await connection.fetch(
        statement(purpose, fields, leaves),
        now,
        purpose.key,
        list(ids),
        actor.occurred_at,
        actor.request_id,
        actor.operation,
        actor.actor_kind,
        actor.client_id,
        actor.actor_member_id,
        purpose.legal_basis.value,
        requested,
        [k.code for k in classes],
        [k.outcome for k in classes],
        [_array(k.released) for k in classes],
        [orjson.dumps(k.withheld).decode() for k in classes],
        [orjson.dumps(k.details).decode() for k in classes],
        [k.relies_on_consent for k in classes],
        *([t[i] for t in templates] for i in range(4)),
    )
    return [
        Row(
            row["n"] - 1,
            row["failed"] != NOT_FOUND,
            None if row["failed"] is None or row["failed"] == NOT_FOUND else row["failed"],
            row["data"],
            row["outcome"],
        )
        for row in rows
    ]


def _array(items: Sequence[str]) -> str:
    return (
        "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "}"
    )
