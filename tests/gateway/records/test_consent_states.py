"""The consent's state, one rule: the newest event of a (member, purpose) by `seq`, in one view
(migration 0004), and a grant past its expiry counts as expired from that instant."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import ConsentEventKind, ConsentMethod, ConsentState, consent_state_at
from gateway.records.consents import current_event, fetch_consent_states
from gateway.store.db import raw_of
from tests.conftest import add_member
from tests.helpers import grant, withdraw

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
SOURCES = Path(__file__).resolve().parents[3]


async def test_the_newest_event_by_seq_is_the_state_whatever_its_time(db: AsyncEngine) -> None:
    """A back-dated withdrawal recorded after a grant still ends it: commits order the history."""
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers", granted_at=NOW)
    await withdraw(db, member_id, "personalized_offers")
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE consent_events SET occurred_at = :at WHERE kind = 'WITHDRAWN'"),
            {"at": NOW - dt.timedelta(days=30)},
        )
        raw = await raw_of(connection)
        states = await fetch_consent_states(raw, [member_id])
        current = await current_event(raw, member_id, "personalized_offers")
        [viewed] = (await connection.execute(text("SELECT kind FROM consent_states"))).all()

    assert states[member_id]["personalized_offers"].kind is ConsentEventKind.WITHDRAWN
    assert current is not None
    assert current.kind is ConsentEventKind.WITHDRAWN
    assert viewed.kind == "WITHDRAWN"


@pytest.mark.parametrize(
    ("kind", "expires_in", "state"),
    [
        (ConsentEventKind.GRANTED, dt.timedelta(seconds=1), ConsentEventKind.GRANTED),
        (ConsentEventKind.GRANTED, dt.timedelta(0), ConsentEventKind.EXPIRED),
        (ConsentEventKind.GRANTED, -dt.timedelta(days=1), ConsentEventKind.EXPIRED),
        (ConsentEventKind.GRANTED, None, ConsentEventKind.GRANTED),
        (ConsentEventKind.WITHDRAWN, None, ConsentEventKind.WITHDRAWN),
        (ConsentEventKind.EXPIRED, None, ConsentEventKind.EXPIRED),
    ],
    ids=["in-force", "at-the-instant", "past", "no-expiry", "withdrawn", "expired"],
)
def test_a_grant_past_its_expiry_is_expired_from_that_instant(
    kind: ConsentEventKind, expires_in: dt.timedelta | None, state: ConsentEventKind
) -> None:
    expires_at = NOW + expires_in if expires_in is not None else None
    consent = ConsentState(kind, None, ConsentMethod.EXPLICIT, "2026-01", expires_at)

    assert consent_state_at(kind, expires_at, NOW) is state
    assert consent.state_at(NOW) is state


NEWEST_BY_HAND = re.compile(
    r"DISTINCT ON \(member_id, purpose_key\)|DISTINCT ON \(purpose_key\)|"
    r"FROM consent_events[^;]*ORDER BY seq DESC",
    re.IGNORECASE | re.DOTALL,
)


def test_no_query_works_out_the_newest_event_but_the_view() -> None:
    """The rule stands once: gateway code reads `consent_states`, never its own DISTINCT ON."""
    offenders = [
        str(path.relative_to(SOURCES))
        for package in ("gateway", "resolvers", "schema")
        for path in (SOURCES / package).rglob("*.py")
        if NEWEST_BY_HAND.search(path.read_text(encoding="utf-8"))
    ]

    assert offenders == []
