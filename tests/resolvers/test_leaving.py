"""Leaving the club, being forgotten, lifting an objection, and receipts kept by the member."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import seal_until_current
from gateway.domain import Capability, Role
from gateway.records.lifecycle import purge_erased_evidence
from gateway.store.db import raw_of
from tests.conftest import TEST_SIGNER, Api, add_client, add_member, member_token, row_counts
from tests.helpers import access_events, audit_writes_fail, enrich, grant, read, verify

LEAVE = "mutation { leaveClub { memberId closed closedAt withdrawnPurposes purgedFields message } }"
CLOSE = """
mutation($id: ID!) { closeMembership(memberId: $id) { memberId closed withdrawnPurposes } }
"""
ERASE = """
mutation($email: String!) {
  eraseMe(confirmEmail: $email) {
    receiptId memberId erasedAt consentEventsKept evidenceKeptUntil kept
    deleted { what count }
  }
}
"""
OBJECT = 'mutation { objectToProcessing(purpose: "data_quality") { objectedAt } }'
LIFT = """
mutation($purpose: String!) {
  withdrawObjection(purpose: $purpose) { memberId purpose lifted liftedAt message }
}
"""
CLEANSE = """
mutation($member: ID!) {
  recordCleansing(memberId: $member, field: "city", newValue: "Bergen", source: "Folkeregisteret") {
    changed
  }
}
"""
RECEIPT = """
query($id: ID!) { me { consentReceipt(id: $id) { receiptId purpose method collectedBy } } }
"""
WITHDRAW_BY_RECEIPT = """
mutation($receipt: ID!) { withdrawConsent(receiptId: $receipt) { withdrawn purpose } }
"""
EMAIL = "kari.leaving@example.no"


@pytest.fixture
async def reader(db: AsyncEngine) -> str:
    client = await add_client(
        db, name="campaigns", purposes=("membership_service", "personalized_offers")
    )
    return client.key


async def member_with_everything(db: AsyncEngine) -> tuple[uuid.UUID, uuid.UUID]:
    member_id = await add_member(db, email=EMAIL)
    grant_id = await grant(db, member_id, "personalized_offers")
    await grant(db, member_id, "customer_insight", method="CONDITIONAL")
    await enrich(db, member_id, grant_id)
    return member_id, grant_id


def error_code(body: dict[str, Any]) -> str:
    return str(body["errors"][0]["extensions"]["code"])


# -- Leaving ---------------------------------------------------------------------------------------


async def test_leaving_closes_withdraws_and_purges_together(
    api: Api, db: AsyncEngine, reader: str
) -> None:
    member_id, _ = await member_with_everything(db)
    token = member_token(member_id)

    response = await api.graphql(LEAVE, token=token)

    result = response.json()["data"]["leaveClub"]
    assert result["closed"] is True
    assert result["withdrawnPurposes"] == ["customer_insight", "personalized_offers"]
    assert result["purgedFields"] == [
        "household_size",
        "income_band",
        "interests",
        "lifestyle_segment",
    ]
    assert (await row_counts(db))["enrichment_records"] == 0
    [event] = [e for e in await access_events(db) if e["operation"] == "leaveClub"]
    assert event["outcome"] == "WRITTEN"
    assert len(event["consent_ids"]) == 2
    # Contract purposes withhold; the member still has `me` and the export.
    body = await read(api, reader, member_id, "membership_service")
    assert body["data"]["member"]["firstName"] is None
    withheld = {e["path"][-1]: e["extensions"]["code"] for e in body["errors"]}
    assert withheld["firstName"] == withheld["email"] == "MEMBERSHIP_INACTIVE"
    me = await api.graphql("{ me { profile { membershipStatus } } }", token=token)
    assert me.json()["data"]["me"]["profile"]["membershipStatus"] == "CLOSED"
    export = await api.http.get("/me/export", headers={"Authorization": f"Bearer {token}"})
    assert export.status_code == 200


async def test_leaving_twice_changes_nothing_the_second_time(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    await api.graphql(LEAVE, token=token)
    before = await row_counts(db)

    again = (await api.graphql(LEAVE, token=token)).json()["data"]["leaveClub"]

    assert again["closed"] is False
    assert again["withdrawnPurposes"] == []
    after = await row_counts(db)
    assert after["consent_events"] == before["consent_events"]


async def test_a_member_who_left_gives_no_consents_and_changes_no_data(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    await api.graphql(LEAVE, token=token)
    before = await row_counts(db)

    granted = await api.graphql(
        'mutation { grantConsent(purpose: "personalized_offers", method: EXPLICIT, '
        'noticeVersion: "2026-01", channel: "app", evidence: "Ja") { receiptId } }',
        token=token,
    )
    updated = await api.graphql(
        'mutation { updateMyProfile(changes: {city: "Bergen"}) { changed } }', token=token
    )

    assert error_code(granted.json()) == "MEMBERSHIP_INACTIVE"
    assert error_code(updated.json()) == "MEMBERSHIP_INACTIVE"
    after = await row_counts(db)
    assert after["consent_events"] == before["consent_events"]
    assert after["profile_changes"] == 0


async def test_an_app_closes_a_membership_with_the_capability_only(
    api: Api, db: AsyncEngine
) -> None:
    member_id, _ = await member_with_everything(db)
    plain = await add_client(db, name="plain")
    able = await add_client(db, name="crm", capabilities=(Capability.CLOSE_MEMBERSHIP,))

    refused = await api.graphql(CLOSE, {"id": str(member_id)}, token=plain.key)
    assert error_code(refused.json()) == "FORBIDDEN"
    assert (await row_counts(db))["enrichment_records"] == 4

    closed = await api.graphql(CLOSE, {"id": str(member_id)}, token=able.key)

    assert closed.json()["data"]["closeMembership"]["closed"] is True
    assert (await row_counts(db))["enrichment_records"] == 0


async def test_members_cannot_close_someone_elses_membership(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    other = await add_member(db)

    response = await api.graphql(CLOSE, {"id": str(other)}, token=member_token(member_id))

    assert error_code(response.json()) == "FORBIDDEN"


# -- Being forgotten -------------------------------------------------------------------------------


async def test_erasure_needs_the_members_email_as_confirmation(api: Api, db: AsyncEngine) -> None:
    member_id, _ = await member_with_everything(db)
    before = await row_counts(db)

    response = await api.graphql(
        ERASE, {"email": "someone@example.no"}, token=member_token(member_id)
    )

    assert error_code(response.json()) == "CONFIRMATION_REQUIRED"
    after = await row_counts(db)
    assert {t: n for t, n in after.items() if t != "access_events"} == {
        t: n for t, n in before.items() if t != "access_events"
    }


async def test_erasure_forgets_the_person_and_keeps_what_must_be_kept(
    api: Api, db: AsyncEngine, reader: str
) -> None:
    member_id, grant_id = await member_with_everything(db)
    token = member_token(member_id)
    await api.graphql(OBJECT, token=token)
    await api.graphql(
        'mutation { updateMyProfile(changes: {city: "Bergen"}) { changed } }', token=token
    )
    await read(api, reader, member_id, "personalized_offers")
    await seal_until_current(db, TEST_SIGNER)
    events_before = len(await access_events(db))

    response = await api.graphql(ERASE, {"email": EMAIL.upper()}, token=token)

    receipt = response.json()["data"]["eraseMe"]
    assert receipt["memberId"] == str(member_id)
    deleted = {d["what"]: d["count"] for d in receipt["deleted"]}
    assert deleted["profile"] == 1
    assert deleted["enrichment_records"] == 4
    assert deleted["objections"] == 1
    assert deleted["profile_changes"] == 1
    assert deleted["consents_withdrawn"] == 2
    assert receipt["consentEventsKept"] == 4  # two grants, two withdrawals
    kept_until = dt.datetime.fromisoformat(receipt["evidenceKeptUntil"])
    assert kept_until - dt.datetime.fromisoformat(receipt["erasedAt"]) == dt.timedelta(days=1095)
    counts = await row_counts(db)
    assert counts["members"] == 0
    assert counts["enrichment_records"] == 0
    assert counts["objections"] == 0
    assert counts["profile_changes"] == 0
    assert counts["erasures"] == 1
    # Nothing left in Tillit's database names the person.
    async with db.connect() as connection:
        dump = await connection.scalar(
            text(
                "SELECT string_agg(t::text, ' ') FROM (SELECT row_to_json(x)::text AS t FROM "
                "(SELECT * FROM access_events) x UNION ALL SELECT row_to_json(c)::text FROM "
                "consent_events c UNION ALL SELECT row_to_json(e)::text FROM erasures e) s"
            )
        )
    for personal in ("Kari", "Nordmann", "kari.leaving", "Storgata", "91234567", "Bergen"):
        assert personal not in str(dump), personal
    # The trail still verifies, with every event it had, and the erasure on top.
    await seal_until_current(db, TEST_SIGNER)
    report = await verify(db)
    assert report.ok, report.problems
    assert len(await access_events(db)) == events_before + 1
    # The evidence of the consents is still there, under the pseudonymous id.
    async with db.connect() as connection:
        kept = await connection.scalar(
            text("SELECT count(*) FROM consent_events WHERE id = :g"), {"g": grant_id}
        )
    assert kept == 1
    # The erased member's token, and an app's read, find nobody.
    me = await api.graphql("{ me { id } }", token=token)
    assert error_code(me.json()) == "NOT_FOUND"
    body = await read(api, reader, member_id, "membership_service")
    assert error_code(body) == "NOT_FOUND"


async def test_the_evidence_goes_when_its_keeping_period_ends(api: Api, db: AsyncEngine) -> None:
    member_id, _ = await member_with_everything(db)
    await api.graphql(ERASE, {"email": EMAIL}, token=member_token(member_id))
    async with db.begin() as connection:
        early = await purge_erased_evidence(await raw_of(connection), now=dt.datetime.now(dt.UTC))
    assert early == (0, 0)

    async with db.begin() as connection:
        late = await purge_erased_evidence(
            await raw_of(connection), now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1096)
        )

    assert late == (1, 4)
    assert (await row_counts(db))["consent_events"] == 0
    assert (await row_counts(db))["erasures"] == 1


async def test_only_the_member_erases_themself_over_the_api(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db, email=EMAIL)
    app = await add_client(db, name="crm", capabilities=tuple(Capability))

    response = await api.graphql(ERASE, {"email": EMAIL}, token=app.key)

    assert error_code(response.json()) == "FORBIDDEN"
    assert (await row_counts(db))["members"] == 1
    assert member_id


# -- Objections ------------------------------------------------------------------------------------


async def test_lifting_an_objection_lets_cleansing_resume_and_keeps_the_history(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db)
    token = member_token(member_id)
    cleanser = await add_client(
        db, name="registry", purposes=("data_quality",), capabilities=(Capability.CLEANSE,)
    )
    await api.graphql(OBJECT, token=token)
    refused = await api.graphql(CLEANSE, {"member": str(member_id)}, token=cleanser.key)
    assert error_code(refused.json()) == "OBJECTED"

    lifted = await api.graphql(LIFT, {"purpose": "data_quality"}, token=token)

    assert lifted.json()["data"]["withdrawObjection"]["lifted"] is True
    cleansed = await api.graphql(CLEANSE, {"member": str(member_id)}, token=cleanser.key)
    assert cleansed.json()["data"]["recordCleansing"]["changed"] is True
    history = await api.graphql("{ me { objections { purpose liftedAt } } }", token=token)
    [objection] = history.json()["data"]["me"]["objections"]
    assert objection["liftedAt"] is not None
    again = await api.graphql(LIFT, {"purpose": "data_quality"}, token=token)
    assert again.json()["data"]["withdrawObjection"]["lifted"] is False
    events = [e for e in await access_events(db) if e["operation"] == "withdrawObjection"]
    assert [e["outcome"] for e in events] == ["WRITTEN", "UNCHANGED"]


async def test_only_members_lift_objections(api: Api, db: AsyncEngine) -> None:
    app = await add_client(db, name="crm", purposes=("data_quality",))

    response = await api.graphql(LIFT, {"purpose": "data_quality"}, token=app.key)
    unknown = await api.graphql(LIFT, {"purpose": "nope"}, token=member_token(await add_member(db)))

    assert error_code(response.json()) == "FORBIDDEN"
    assert error_code(unknown.json()) == "UNKNOWN_PURPOSE"


# -- Receipts --------------------------------------------------------------------------------------


async def test_a_member_reads_a_receipt_and_withdraws_by_it(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "personalized_offers")
    token = member_token(member_id)

    receipt = await api.graphql(RECEIPT, {"id": str(grant_id)}, token=token)

    assert receipt.json()["data"]["me"]["consentReceipt"] == {
        "receiptId": str(grant_id),
        "purpose": "personalized_offers",
        "method": "EXPLICIT",
        "collectedBy": "member",
    }
    withdrawn = await api.graphql(WITHDRAW_BY_RECEIPT, {"receipt": str(grant_id)}, token=token)
    assert withdrawn.json()["data"]["withdrawConsent"] == {
        "withdrawn": True,
        "purpose": "personalized_offers",
    }


async def test_someone_elses_receipt_is_not_found(api: Api, db: AsyncEngine) -> None:
    owner = await add_member(db)
    grant_id = await grant(db, owner, "personalized_offers")
    other = member_token(await add_member(db))
    before = await row_counts(db)

    read_ = await api.graphql(RECEIPT, {"id": str(grant_id)}, token=other)
    withdrawn = await api.graphql(WITHDRAW_BY_RECEIPT, {"receipt": str(grant_id)}, token=other)
    malformed = await api.graphql(WITHDRAW_BY_RECEIPT, {"receipt": "nope"}, token=other)

    assert error_code(read_.json()) == "NOT_FOUND"
    assert error_code(withdrawn.json()) == "NOT_FOUND"
    assert error_code(malformed.json()) == "BAD_USER_INPUT"
    assert (await row_counts(db))["consent_events"] == before["consent_events"]


# -- All or nothing --------------------------------------------------------------------------------

LIFE_WRITES = {
    "enrollMember": (
        'mutation { enrollMember(member: {firstName: "Ola", lastName: "Nordmann", '
        'email: "ola.new@example.no"}, termsVersion: "2026-01", channel: "web") { memberId } }',
        "app",
    ),
    "updateMyProfile": (
        'mutation { updateMyProfile(changes: {city: "Bergen"}) { changed } }',
        "member",
    ),
    "updateMember": (
        'mutation($id: ID!) { updateMember(memberId: $id, purpose: "membership_service", '
        'changes: {city: "Bergen"}) { changed } }',
        "app",
    ),
    "leaveClub": ("mutation { leaveClub { closed } }", "member"),
    "closeMembership": (
        "mutation($id: ID!) { closeMembership(memberId: $id) { closed } }",
        "app",
    ),
    "eraseMe": (f'mutation {{ eraseMe(confirmEmail: "{EMAIL}") {{ receiptId }} }}', "member"),
    "withdrawObjection": (
        'mutation { withdrawObjection(purpose: "data_quality") { lifted } }',
        "member",
    ),
}


@pytest.mark.parametrize("failing", ["insert", "commit"])
@pytest.mark.parametrize("operation", sorted(LIFE_WRITES))
async def test_a_change_and_its_access_event_commit_together(
    api: Api, db: AsyncEngine, operation: str, failing: str
) -> None:
    member_id, _ = await member_with_everything(db)
    token = member_token(member_id)
    await api.graphql(OBJECT, token=token)
    app = await add_client(db, name="crm", capabilities=tuple(Capability))
    document, caller = LIFE_WRITES[operation]
    before = await row_counts(db)

    async with audit_writes_fail(db, failing):
        response = await api.graphql(
            document,
            {"id": str(member_id)} if "$id" in document else None,
            token=token if caller == "member" else app.key,
        )

    assert response.status_code == 503
    assert response.json()["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
    assert await row_counts(db) == before


async def test_reports_keep_their_counts_after_an_erasure(api: Api, db: AsyncEngine) -> None:
    member_id, _ = await member_with_everything(db)
    auditor = await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())
    report = (
        '{ transparencyReport(from: "2026-01-01T00:00:00Z", to: "2030-01-01T00:00:00Z") '
        "{ accesses consentsGranted { key count } } }"
    )
    before = (await api.graphql(report, token=auditor.key)).json()["data"]["transparencyReport"]

    await api.graphql(ERASE, {"email": EMAIL}, token=member_token(member_id))

    after = (await api.graphql(report, token=auditor.key)).json()["data"]["transparencyReport"]
    assert after["consentsGranted"] == before["consentsGranted"]
    # The auditor's first report read, and the erasure, are events of their own.
    assert after["accesses"] == before["accesses"] + 2
