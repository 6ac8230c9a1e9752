"""The decision as SQL (gateway.access.sql, run by gateway.records.audiences) against the decision
in Python (gateway.access.policy.decide): generated purposes, members, consent histories,
objections and moments; both must release and withhold the same fields with the same codes and
rely on the same consent. The members and their histories are real rows (a transaction rolled
back after each example), so the consent view and the joins are part of what is compared."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access import sql as decision_sql
from gateway.access.policy import decide
from gateway.audit.trail import outcome_of
from gateway.domain import (
    Category,
    ConsentEventKind,
    ConsentMethod,
    ConsentState,
    LegalBasis,
    LocalizedText,
    MemberState,
    Purpose,
)
from gateway.records.audiences import decide_members
from gateway.store.db import Raw, asyncpg_dsn
from schema.query import MEMBER_FIELD_CATEGORIES

# Every row refers to one registered purpose (the foreign keys); the decision reads the generated
# Purpose, never the row.
KEY = "personalized_offers"
NOTICES = ["2025-01", "2026-01", "2026-06", "it's-2027"]  # a quote: the literals must hold it
TEXT = LocalizedText(nb="x", en="x")
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
# Around the boundary: a grant expiring exactly now is expired (consent_state_at: <=).
EXPIRY_OFFSETS = [
    dt.timedelta(days=-1),
    dt.timedelta(microseconds=-1),
    dt.timedelta(0),
    dt.timedelta(microseconds=1),
    dt.timedelta(days=30),
]


@st.composite
def purposes(draw: st.DrawFn) -> Purpose:
    categories = draw(st.sets(st.sampled_from(list(Category)), min_size=1))
    return Purpose(
        key=KEY,
        legal_basis=draw(st.sampled_from(list(LegalBasis))),
        categories=frozenset(categories),
        title=TEXT,
        description=TEXT,
        notice_version=draw(st.sampled_from(NOTICES)),
        accepted_notice_versions=frozenset(draw(st.sets(st.sampled_from(NOTICES)))),
        required_consent_method=draw(st.none() | st.sampled_from(list(ConsentMethod))),
    )


@dataclass(frozen=True)
class Event:
    kind: ConsentEventKind
    method: ConsentMethod | None
    notice: str | None
    expires_in: dt.timedelta | None


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(list(ConsentEventKind)))
    if kind is not ConsentEventKind.GRANTED:
        return Event(kind, None, None, None)
    return Event(
        kind,
        draw(st.sampled_from(list(ConsentMethod))),
        draw(st.sampled_from(NOTICES)),
        draw(st.sampled_from(EXPIRY_OFFSETS)),
    )


@dataclass(frozen=True)
class MemberDraw:
    active: bool
    history: list[Event]
    objection: str  # none | in_force | lifted


members = st.builds(
    MemberDraw,
    active=st.booleans(),
    history=st.lists(events(), max_size=3),
    objection=st.sampled_from(["none", "in_force", "lifted"]),
)


async def _insert(
    connection: asyncpg.Connection, drawn: MemberDraw
) -> tuple[uuid.UUID, MemberState]:
    member_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO members (id, first_name, last_name, email, membership_status, closed_at) "
        "VALUES ($1, 'A', 'B', $2, $3, $4)",
        member_id,
        f"{member_id}@example.org",
        "ACTIVE" if drawn.active else "CLOSED",
        None if drawn.active else NOW - dt.timedelta(days=2),
    )
    consent = None
    for event in drawn.history:
        expires = NOW + event.expires_in if event.expires_in is not None else None
        occurred = (expires or NOW) - dt.timedelta(days=40)
        event_id = await connection.fetchval(
            "INSERT INTO consent_events (member_id, purpose_key, kind, method, notice_version, "
            "channel, actor_kind, occurred_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, 'test', 'MEMBER', $6, $7) RETURNING id",
            member_id,
            KEY,
            event.kind.value,
            event.method.value if event.method else None,
            event.notice,
            occurred,
            expires,
        )
        consent = ConsentState(
            kind=event.kind,
            grant_id=event_id if event.kind is ConsentEventKind.GRANTED else None,
            method=event.method,
            notice_version=event.notice,
            expires_at=expires,
        )
    if drawn.objection != "none":
        await connection.execute(
            "INSERT INTO objections (member_id, purpose_key, objected_at, lifted_at) "
            "VALUES ($1, $2, $3, $4)",
            member_id,
            KEY,
            NOW - dt.timedelta(days=3),
            NOW - dt.timedelta(days=1) if drawn.objection == "lifted" else None,
        )
    state = MemberState(
        membership_active=drawn.active,
        consents={KEY: consent} if consent is not None else {},
        objections=frozenset({KEY}) if drawn.objection == "in_force" else frozenset(),
    )
    return member_id, state


@pytest.fixture
async def driver(db: AsyncEngine, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    purpose=purposes(),
    asked=st.sets(st.sampled_from(sorted(MEMBER_FIELD_CATEGORIES))),
    drawn=st.lists(members, min_size=1, max_size=5),
)
async def test_the_sql_decision_is_the_python_decision(
    driver: asyncpg.Connection, purpose: Purpose, asked: set[str], drawn: list[MemberDraw]
) -> None:
    fields = {name: MEMBER_FIELD_CATEGORIES[name] for name in sorted(asked)}
    transaction = driver.transaction()
    await transaction.start()
    try:
        states = dict([await _insert(driver, member) for member in drawn])
        decided = await decide_members(Raw(driver), purpose, fields, list(states), now=NOW)
    finally:
        await transaction.rollback()

    assert set(decided) == set(states)
    for member_id, state in states.items():
        expected = decide(purpose, fields, state, NOW)
        got = decided[member_id]
        assert got.released == expected.released
        assert got.withheld == {f: w.code.value for f, w in expected.withheld.items()}
        assert got.consent_ids == expected.consent_ids
        assert got.outcome == outcome_of(expected.released, expected.withheld).value


def test_policy_values_are_written_as_literals_whatever_they_hold() -> None:
    assert decision_sql.literal("it's") == "'it''s'"
    with pytest.raises(ValueError, match="NUL"):
        decision_sql.literal("a\x00b")
