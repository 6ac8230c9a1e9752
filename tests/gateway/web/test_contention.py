"""An operation that loses a race with another transaction (a deadlock victim, a serialization
failure, a unique or foreign key taken or removed meanwhile) is rolled back whole and run again,
a bounded number of times; it never answers 500.

The loss is forced by a trigger that fails with the SQLSTATE a real race gives, for as many runs
as a sequence allows (a sequence is not rolled back with the run that failed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Capability
from gateway.store.db import contended
from gateway.web.graphql import ATTEMPTS
from tests.conftest import Api, add_client, add_member, make_settings, member_token, serving
from tests.helpers import WORDING

GRANT = """
mutation($evidence: String!) {
  grantConsent(purpose: "personalized_offers", method: EXPLICIT, noticeVersion: "2026-01",
               channel: "web", evidence: $evidence) { receiptId }
}
"""
CLEANSE = """
mutation($member: ID!) {
  recordCleansing(memberId: $member, field: "city", newValue: "Bergen", source: "Register",
                  purpose: "data_quality") { changed }
}
"""


@asynccontextmanager
async def losing(engine: AsyncEngine, table: str, sqlstate: str, runs: int) -> AsyncIterator[None]:
    """Inserts into `table` fail with `sqlstate` for the first `runs` tries."""
    async with engine.begin() as connection:
        await connection.execute(text("CREATE SEQUENCE IF NOT EXISTS lost_runs"))
        await connection.execute(text("ALTER SEQUENCE lost_runs RESTART"))
        await connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION lose_a_race() RETURNS trigger "
                "LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN "
                f"IF nextval('lost_runs') <= {runs} THEN "
                f"RAISE EXCEPTION 'lost a race' USING ERRCODE = '{sqlstate}'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                f"CREATE TRIGGER lose_a_race BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION lose_a_race()"
            )
        )
    try:
        yield
    finally:
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TRIGGER lose_a_race ON {table}"))


def retries(sqlstate: str) -> float:
    value = REGISTRY.get_sample_value("tillit_operation_retries_total", {"sqlstate": sqlstate})
    return value or 0.0


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(sql)) or 0)


async def test_a_deadlock_victim_runs_again_and_is_answered_once(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    before = retries("40P01")
    async with losing(db, "consent_events", "40P01", runs=ATTEMPTS - 1):
        answer = await api.graphql(GRANT, {"evidence": WORDING}, token=member_token(member_id))

    assert answer.status_code == 200
    assert answer.json()["data"]["grantConsent"]["receiptId"]
    assert retries("40P01") - before == ATTEMPTS - 1
    assert await count(db, "SELECT count(*) FROM consent_events") == 1
    assert (
        await count(db, "SELECT count(*) FROM access_events WHERE operation = 'grantConsent'") == 1
    )


async def test_a_key_taken_meanwhile_runs_again_on_the_general_path(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    register = await add_client(
        db, name="register", purposes=("data_quality",), capabilities=(Capability.CLEANSE,)
    )
    async with losing(db, "cleansing_records", "23505", runs=1):
        answer = await api.graphql(CLEANSE, {"member": str(member_id)}, token=register.key)

    assert answer.status_code == 200
    assert answer.json()["data"]["recordCleansing"]["changed"] is True
    assert await count(db, "SELECT count(*) FROM cleansing_records") == 1


async def test_an_operation_that_keeps_losing_is_409_conflict_and_leaves_nothing(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    async with losing(db, "consent_events", "40001", runs=ATTEMPTS + 5):
        answer = await api.graphql(GRANT, {"evidence": WORDING}, token=member_token(member_id))

    assert answer.status_code == 409
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert await count(db, "SELECT count(*) FROM consent_events") == 0
    assert await count(db, "SELECT count(*) FROM access_events") == 0


def test_only_lost_races_count_as_contended() -> None:
    class Failure(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = Failure("23503")

    assert [contended(Failure(s)) for s in ("40001", "40P01", "23505")] == [
        "40001",
        "40P01",
        "23505",
    ]
    assert contended(wrapped) == "23503"
    assert contended(Failure("23502")) is None  # not null: a defect, not a race
    assert contended(Failure("42P01")) is None
    assert contended(ValueError("plain")) is None


async def test_an_operation_run_again_counts_once_against_the_rate_limit(
    db: AsyncEngine, gateway_url: str
) -> None:
    """A request that loses races is one request: its runs again do not spend the caller's
    bucket (with a burst of 2, a third count would be 429)."""
    member_id = await add_member(db)
    limited = make_settings(gateway_url, rate_limit_per_second=0.01, rate_limit_burst=2)
    async with serving(limited, gateway_url) as api:
        async with losing(db, "consent_events", "40P01", runs=ATTEMPTS - 1):
            answer = await api.graphql(GRANT, {"evidence": WORDING}, token=member_token(member_id))
        second = await api.graphql("{ purposes { key } }", token=member_token(member_id))

    assert answer.status_code == 200, answer.text
    assert second.status_code == 200  # the first request counted once, leaving one
