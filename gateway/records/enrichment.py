"""Enrichment: third-party values, accepted only on a valid consent, purged when none covers
them any more."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.policy import consent_problem, decide
from gateway.domain import Category, ConsentState, EnrichedField, LegalBasis, MemberState, Purpose
from gateway.errors import BadUserInput, Refused
from gateway.records.members import fetch_bundles
from gateway.store.db import Raw

MAX_SOURCE = 100


def validate_value(field: EnrichedField, value: Any) -> Any:
    """The value in its stored form, or BadUserInput saying what is wrong with it."""
    name = field.value

    def text_value(limit: int) -> str:
        if not isinstance(value, str) or not value.strip():
            raise BadUserInput(f"`{name}` must be a non-empty text.", field=name)
        if len(value) > limit:
            raise BadUserInput(f"`{name}` is longer than {limit} characters.", field=name)
        return value.strip()

    if field is EnrichedField.INCOME_BAND:
        return text_value(32)
    if field is EnrichedField.LIFESTYLE_SEGMENT:
        return text_value(64)
    if field is EnrichedField.HOUSEHOLD_SIZE:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
            raise BadUserInput("`household_size` is a whole number from 1 to 20.", field=name)
        return value
    if not isinstance(value, list) or not 1 <= len(value) <= 20:
        raise BadUserInput("`interests` is a list of 1 to 20 texts.", field=name)
    items = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > 40:
            raise BadUserInput(
                "Each interest is a non-empty text of at most 40 characters.", field=name
            )
        items.append(item.strip())
    return sorted(set(items))


def validate_source(source: str) -> str:
    if not source or not source.strip():
        raise BadUserInput("`source` must name where the values come from.", argument="source")
    if len(source) > MAX_SOURCE:
        raise BadUserInput(f"`source` is longer than {MAX_SOURCE} characters.", argument="source")
    return source.strip()


def enrichment_refusal(
    purpose: Purpose, fields: Iterable[EnrichedField], state: MemberState, now: dt.datetime
) -> tuple[Refused | None, uuid.UUID | None]:
    """Why these values may not be stored for this member under this purpose, or the consent
    they rest on. The same access decision as a read: purpose, category, consent."""
    if purpose.legal_basis is not LegalBasis.CONSENT:
        raise BadUserInput(
            f"Enrichment needs a consent purpose; {purpose.key} rests on "
            f"{purpose.legal_basis.value}.",
            purpose=purpose.key,
        )
    decision = decide(purpose, {f.value: f.category for f in fields}, state, now)
    for name, withheld in sorted(decision.withheld.items()):
        return Refused(
            withheld.code, withheld.message, purpose=purpose.key, field=name, **withheld.hints
        ), None
    return None, decision.consent_ids[0]


@dataclass(frozen=True, slots=True)
class EnrichmentRow:
    member_id: uuid.UUID
    field: EnrichedField
    value: Any
    source: str
    obtained_at: dt.datetime
    purpose: str
    consent_id: uuid.UUID


# Raw SQL because bulk import is the hot path: one statement over arrays (unnest) takes any number
# of rows without hitting the bind-parameter limit, and skips rows already stored as they are.
_UPSERT = text(
    """
    INSERT INTO enrichment_records AS r
        (member_id, field, category, value, source, obtained_at, purpose_key, consent_event_id,
         recorded_by_client_id)
    SELECT m, f, c, CAST(v AS jsonb), s, o, p, g, CAST(:client AS uuid)
    FROM unnest(CAST(:members AS uuid[]), CAST(:fields AS text[]), CAST(:categories AS text[]),
                CAST(:values AS text[]), CAST(:sources AS text[]),
                CAST(:obtained AS timestamptz[]), CAST(:purposes AS text[]),
                CAST(:grants AS uuid[])) AS t(m, f, c, v, s, o, p, g)
    ON CONFLICT (member_id, field) DO UPDATE SET
        value = EXCLUDED.value, source = EXCLUDED.source, obtained_at = EXCLUDED.obtained_at,
        purpose_key = EXCLUDED.purpose_key, consent_event_id = EXCLUDED.consent_event_id,
        recorded_by_client_id = EXCLUDED.recorded_by_client_id, recorded_at = now()
    WHERE (r.value, r.source, r.consent_event_id)
          IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.source, EXCLUDED.consent_event_id)
    RETURNING r.member_id, r.field
    """
)


async def upsert_values(
    connection: AsyncConnection, rows: Sequence[EnrichmentRow], *, client_id: uuid.UUID | None
) -> list[tuple[uuid.UUID, EnrichedField]]:
    """Store values (one per member and field; the last given wins), skipping those already
    stored as they are. Returns the (member, field) pairs that changed. One statement."""
    latest = {(row.member_id, row.field): row for row in rows}
    if not latest:
        return []
    unique = list(latest.values())
    result = await connection.execute(
        _UPSERT,
        {
            "client": client_id,
            "members": [row.member_id for row in unique],
            "fields": [row.field.value for row in unique],
            "categories": [row.field.category.value for row in unique],
            "values": [json.dumps(row.value) for row in unique],
            "sources": [row.source for row in unique],
            "obtained": [row.obtained_at for row in unique],
            "purposes": [row.purpose for row in unique],
            "grants": [row.consent_id for row in unique],
        },
    )
    return [(member_id, EnrichedField(field)) for member_id, field in result]


def covering_purposes(
    category: Category,
    purposes: Mapping[str, Purpose],
    consents: Mapping[str, ConsentState],
    now: dt.datetime,
) -> list[tuple[Purpose, uuid.UUID]]:
    """The consent purposes whose valid consent covers a category, with the grant relied on."""
    covering = []
    for purpose in purposes.values():
        if purpose.legal_basis is not LegalBasis.CONSENT or category not in purpose.categories:
            continue
        consent = consents.get(purpose.key)
        if (
            consent is not None
            and consent.grant_id
            and consent_problem(purpose, consent, now) is None
        ):
            covering.append((purpose, consent.grant_id))
    return covering


async def purge_uncovered(
    connection: Raw,
    *,
    member_id: uuid.UUID,
    purposes: Mapping[str, Purpose],
    now: dt.datetime,
) -> list[EnrichedField]:
    """Delete the member's enriched values that no valid consent covers any more; values another
    consent still covers are moved onto that consent. Returns what was deleted."""
    # The member's consent states and enriched values, in one statement.
    bundle = (await fetch_bundles(connection, [member_id])).get(member_id)
    if bundle is None:
        return []
    states, values = bundle.consents, bundle.enrichment
    purged: list[EnrichedField] = []
    for field in sorted(values):
        covering = covering_purposes(field.category, purposes, states, now)
        if not covering:
            purged.append(field)
            continue
        if bundle.obtained_under(field) not in {grant for _, grant in covering}:
            purpose, grant = covering[0]
            await connection.execute(_MOVE, member_id, field.value, purpose.key, grant)
    if purged:
        await connection.execute(_PURGE, member_id, [f.value for f in purged])
    return purged


# Raw SQL: part of every withdrawal, which runs on a plain asyncpg connection.
_MOVE = (
    "UPDATE enrichment_records SET purpose_key = $3, consent_event_id = $4 "
    "WHERE member_id = $1 AND field = $2"
)
_PURGE = "DELETE FROM enrichment_records WHERE member_id = $1 AND field = ANY($2::text[])"
