"""GET /audiences/export: a purpose's audience for a campaign tool, and the nightly sync
(`since=`) with its suppression list; audited per member, fail closed, with a signed manifest."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.verify import manifest_content
from gateway.domain import ActorKind, Capability
from gateway.records import audience_export
from gateway.records.lifecycle import erase_member
from gateway.settings import Settings
from gateway.store.db import raw_of
from tests.conftest import (
    TEST_SIGNER,
    Api,
    add_client,
    add_member,
    member_token,
    row_counts,
    serving,
)
from tests.helpers import grant, withdraw

PURPOSE = "email_marketing"
LEAVE = "mutation { leaveClub { closed } }"
OBJECT = 'mutation { objectToProcessing(purpose: "data_quality") { objectedAt } }'
NOW = dt.datetime.now(dt.UTC)


async def marketer(db: AsyncEngine, name: str = "esp", **kwargs: Any) -> str:
    issued = await add_client(
        db,
        name=name,
        purposes=kwargs.pop(
            "purposes", (PURPOSE, "membership_service", "personalized_offers", "data_quality")
        ),
        capabilities=kwargs.pop("capabilities", (Capability.AUDIENCE,)),
    )
    return issued.key


async def export(api: Api, key: str, **params: str) -> Any:
    return await api.http.get(
        "/audiences/export",
        params={"purpose": PURPOSE, **params},
        headers={"Authorization": f"Bearer {key}"},
    )


async def manifest_of(api: Api, key: str, response: Any) -> dict[str, Any]:
    found = await api.http.get(
        "/audiences/export/manifest",
        params={"export": response.headers["X-Tillit-Export"]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert found.status_code == 200, found.text
    document: dict[str, Any] = found.json()
    return document


def rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def by_id(lines: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {line["id"]: line for line in lines}


async def events(db: AsyncEngine, operation: str = "audienceExport") -> list[dict[str, Any]]:
    async with db.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT member_id, outcome, consent_ids, fields_released, fields_withheld, "
                "details, client_id FROM access_events WHERE operation = :o ORDER BY id"
            ),
            {"o": operation},
        )
        return [dict(row._mapping) for row in result]


async def member_events(db: AsyncEngine) -> list[dict[str, Any]]:
    return [e for e in await events(db) if e["member_id"] is not None]


async def test_the_export_holds_exactly_the_members_whose_consent_holds_each_audited(
    api: Api, db: AsyncEngine
) -> None:
    key = await marketer(db)
    holds = await add_member(db, first_name="Holds")
    grant_id = await grant(db, holds, PURPOSE)
    withdrawn = await add_member(db)
    await grant(db, withdrawn, PURPOSE)
    await withdraw(db, withdrawn, PURPOSE)
    # Past its expiry with no EXPIRED event written: no job has run, and it is out already.
    expired = await add_member(db)
    await grant(db, expired, PURPOSE, expires_at=NOW - dt.timedelta(seconds=1))
    conditional = await add_member(db)
    await grant(db, conditional, PURPOSE, method="CONDITIONAL")
    outdated = await add_member(db)
    await grant(db, outdated, PURPOSE, notice="2025-01")
    never = await add_member(db)

    response = await export(api, key)

    lines = rows(response)
    assert [line["id"] for line in lines] == [str(holds)]
    [line] = lines
    assert line["action"] == "upsert"
    assert line["firstName"] == "Holds"
    assert line["tier"] == "GOLD"
    # Only what the purpose releases: contact and membership, no address, no enriched data.
    assert "street" not in line
    assert "incomeBand" not in line
    audited = await member_events(db)
    assert [(e["member_id"], e["outcome"], e["consent_ids"]) for e in audited] == [
        (holds, "RELEASED", [grant_id])
    ]
    assert {withdrawn, expired, conditional, outdated, never}.isdisjoint(
        e["member_id"] for e in audited
    )


async def test_the_manifest_is_signed_and_describes_the_body(api: Api, db: AsyncEngine) -> None:
    key = await marketer(db)
    for _ in range(3):
        await grant(db, await add_member(db), PURPOSE)

    for fmt in ("csv", "jsonl"):
        response = await export(api, key, format=fmt)
        document = await manifest_of(api, key, response)

        assert document["rows"] == 3
        assert document["upserts"] == 3
        assert document["suppressions"] == 0
        assert document["bytes"] == len(response.content)
        assert document["sha256"] == hashlib.sha256(response.content).hexdigest()
        assert document["format"] == fmt
        assert document["cursor"] == response.headers["X-Tillit-Export"]
        signature = bytes.fromhex(document["signature"])
        TEST_SIGNER.verifier.verify(signature, manifest_content(document))
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["action"] for line in lines] == ["upsert"] * 3
    assert all(line["tier"] == "GOLD" for line in lines)


async def test_cells_that_a_spreadsheet_would_run_are_defused_and_quoted(
    api: Api, db: AsyncEngine
) -> None:
    key = await marketer(db)
    member = await add_member(db, first_name='=HYPERLINK("http://x","a, b")', last_name="Ola")
    await grant(db, member, PURPOSE)

    [line] = rows(await export(api, key))

    assert line["firstName"] == '\'=HYPERLINK("http://x","a, b")'
    assert line["lastName"] == "Ola"
    # An E.164 number cannot run as a formula: the campaign tool gets it as it is.
    assert line["phone"] == "+4791234567"


async def test_a_page_of_batches_streams_every_member_once_in_id_order(
    api: Api, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audience_export, "BATCH", 3)
    key = await marketer(db)
    members = []
    for n in range(8):
        member = await add_member(db)
        if n != 4:
            await grant(db, member, PURPOSE)
            members.append(member)

    lines = rows(await export(api, key))

    assert [line["id"] for line in lines] == sorted(str(m) for m in members)
    assert len(await member_events(db)) == 7


async def test_refusals_are_audited_and_release_nothing(api: Api, db: AsyncEngine) -> None:
    key = await marketer(db)
    without = await marketer(db, "crm", capabilities=())
    other_purpose = await marketer(db, "shop", purposes=("membership_service",))
    await grant(db, await add_member(db), PURPOSE)

    refused = {
        "no capability": (await export(api, without), 403, "FORBIDDEN"),
        "purpose not the client's": (
            await export(api, other_purpose),
            400,
            "PURPOSE_NOT_PERMITTED",
        ),
        # email_marketing does not release enriched data: selecting on it would reveal it.
        "filter on a withheld field": (
            await export(api, key, where=json.dumps({"incomeBand": ["high"]})),
            400,
            "CATEGORY_NOT_IN_PURPOSE",
        ),
        "bad format": (await export(api, key, format="xlsx"), 400, "BAD_USER_INPUT"),
        "bad where": (await export(api, key, where="{"), 400, "BAD_USER_INPUT"),
        "unknown filter": (await export(api, key, where='{"email": "a"}'), 400, "BAD_USER_INPUT"),
        "bad cursor": (await export(api, key, since="yesterday"), 400, "BAD_USER_INPUT"),
    }

    for name, (response, status, code) in refused.items():
        assert (response.status_code, response.json()["errors"][0]["extensions"]["code"]) == (
            status,
            code,
        ), name
        assert "@example.org" not in response.text, name
    assert await member_events(db) == []
    logged = [e for e in await events(db) if e["outcome"] == "DENIED"]
    assert len(logged) == len(refused)
    assert any(e["details"].get("reason") == "CATEGORY_NOT_IN_PURPOSE" for e in logged), (
        "the refused filter is in the log"
    )
    async with db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM audience_exports")) == 0


async def test_a_failing_audit_write_sends_no_rows(api: Api, db: AsyncEngine) -> None:
    key = await marketer(db)
    await grant(db, await add_member(db, first_name="Sensitive"), PURPOSE)
    async with db.begin() as connection:
        # Only the members' events fail: the request's own is written, the batch's is refused.
        await connection.execute(
            text(
                "CREATE FUNCTION refuse_member_events() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF NEW.member_id IS NOT NULL THEN "
                "RAISE EXCEPTION 'audit store refuses'; END IF; RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER refuse_member_events BEFORE INSERT ON access_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_member_events()"
            )
        )
    try:
        response = await export(api, key)
    finally:
        async with db.begin() as connection:
            await connection.execute(text("DROP TRIGGER refuse_member_events ON access_events"))
            await connection.execute(text("DROP FUNCTION refuse_member_events()"))

    assert response.status_code == 503
    assert response.json()["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
    assert "Sensitive" not in response.text
    assert "@example.org" not in response.text
    assert await member_events(db) == []
    async with db.connect() as connection:
        # Unfinished: no manifest, so it cannot start a sync.
        assert (
            await connection.scalar(
                text("SELECT count(*) FROM audience_exports WHERE manifest IS NOT NULL")
            )
            == 0
        )


async def test_a_batch_whose_events_fail_midway_ends_the_stream_without_its_rows(
    api: Api, db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audience_export, "BATCH", 2)
    key = await marketer(db)
    members = sorted([await add_member(db) for _ in range(5)])
    for member in members:
        await grant(db, member, PURPOSE)
    async with db.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION refuse_late() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN IF NEW.member_id >= '{members[2]}' THEN "
                "RAISE EXCEPTION 'audit store refuses'; END IF; RETURN NEW; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER refuse_late BEFORE INSERT ON access_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_late()"
            )
        )
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011  # the stream breaks off
            await export(api, key)
    finally:
        async with db.begin() as connection:
            await connection.execute(text("DROP TRIGGER refuse_late ON access_events"))
            await connection.execute(text("DROP FUNCTION refuse_late()"))

    # The first batch went out with its events; nothing of the refused batch was written.
    assert sorted(e["member_id"] for e in await member_events(db)) == members[:2]


# -- Syncs ----------------------------------------------------------------------------------------


async def test_a_sync_carries_every_kind_of_change_and_nothing_else(
    api: Api, db: AsyncEngine, settings: Settings
) -> None:
    key = await marketer(db)
    ids: dict[str, uuid.UUID] = {}
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    for name in ("withdraws", "expires", "closes", "erased", "changes", "stays", "late"):
        ids[name] = await add_member(db, first_name=name)
        expires = soon if name == "expires" else None
        await grant(db, ids[name], PURPOSE, expires_at=expires)
    ids["joins"] = await add_member(db, first_name="joins")
    ids["never"] = await add_member(db, first_name="never")
    # A withdrawal begun before the first export and committed after it (a late commit).
    late = await db.connect()
    late_transaction = await late.begin()
    await late.execute(
        text(
            "INSERT INTO consent_events (member_id, purpose_key, kind, channel, actor_kind) "
            "VALUES (:m, :p, 'WITHDRAWN', 'test', 'MEMBER')"
        ),
        {"m": ids["late"], "p": PURPOSE},
    )

    first = await export(api, key)
    assert {line["firstName"] for line in rows(first)} == {
        "withdraws",
        "expires",
        "closes",
        "erased",
        "changes",
        "stays",
        "late",
    }
    cursor = (await manifest_of(api, key, first))["cursor"]

    await late_transaction.commit()
    await late.close()
    await withdraw(db, ids["withdraws"], PURPOSE)
    left = await api.graphql(LEAVE, token=member_token(ids["closes"]))
    assert left.json()["data"]["leaveClub"]["closed"] is True
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE members SET email = 'new@example.org' WHERE id = :m"),
            {"m": ids["changes"]},
        )
        await connection.execute(
            text("UPDATE members SET points = 1 WHERE id = :m"), {"m": ids["never"]}
        )
    async with db.begin() as connection:
        await erase_member(
            await raw_of(connection),
            member_id=ids["erased"],
            requested_by=ActorKind.MEMBER,
            purposes={},
            evidence_period=dt.timedelta(days=30),
            now=dt.datetime.now(dt.UTC),
        )
    await grant(db, ids["joins"], PURPOSE)
    # The expiry passes with no job run and no row written.
    await asyncio.sleep(max(0.0, (soon - dt.datetime.now(dt.UTC)).total_seconds() + 0.1))

    delta = rows(await export(api, key, since=cursor))

    got = {line["id"]: (line["action"], line["reason"]) for line in delta}
    assert got == {
        str(ids["withdraws"]): ("suppress", "CONSENT_WITHDRAWN"),
        str(ids["late"]): ("suppress", "CONSENT_WITHDRAWN"),
        str(ids["expires"]): ("suppress", "CONSENT_EXPIRED"),
        str(ids["erased"]): ("suppress", "ERASED"),
        str(ids["changes"]): ("upsert", ""),
        str(ids["joins"]): ("upsert", ""),
        # Leaving the club withdraws every consent with it.
        str(ids["closes"]): ("suppress", "CONSENT_WITHDRAWN"),
    }
    assert by_id(delta)[str(ids["changes"])]["email"] == "new@example.org"
    suppressed = [e for e in await member_events(db) if e["outcome"] == "DENIED"]
    assert {e["member_id"] for e in suppressed} == {
        ids["withdraws"],
        ids["late"],
        ids["expires"],
        ids["erased"],
        ids["closes"],
    }
    assert all(e["fields_released"] == [] for e in suppressed)
    # Nothing changed since: the next sync is empty.
    second = await export(api, key, since=(await manifest_of(api, key, first))["cursor"])
    assert rows(await export(api, key, since=(await manifest_of(api, key, second))["cursor"])) == []


async def test_a_sync_suppresses_a_member_the_selection_no_longer_takes(
    api: Api, db: AsyncEngine
) -> None:
    key = await marketer(db)
    gold = await add_member(db, tier="GOLD")
    await grant(db, gold, PURPOSE)
    where = json.dumps({"tier": ["GOLD"]})
    first = await export(api, key, where=where)
    assert [line["id"] for line in rows(first)] == [str(gold)]
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE members SET tier = 'SILVER' WHERE id = :m"), {"m": gold}
        )

    cursor = (await manifest_of(api, key, first))["cursor"]
    [line] = rows(await export(api, key, where=where, since=cursor))

    assert (line["id"], line["action"], line["reason"]) == (str(gold), "suppress", "NOT_SELECTED")
    # The cursor belongs to this selection: another selection must start from a full export.
    other = await export(api, key, since=cursor)
    assert other.status_code == 400


async def test_a_contract_purpose_suppresses_a_closed_membership(api: Api, db: AsyncEngine) -> None:
    key = await marketer(db)
    member = await add_member(db)
    first = await export(api, key, purpose="membership_service")
    assert [line["id"] for line in rows(first)] == [str(member)]
    async with db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE members SET membership_status = 'CLOSED', closed_at = now() WHERE id = :m"
            ),
            {"m": member},
        )
    cursor = (await manifest_of(api, key, first))["cursor"]

    [line] = rows(await export(api, key, purpose="membership_service", since=cursor))

    assert (line["action"], line["reason"]) == ("suppress", "MEMBERSHIP_INACTIVE")


async def test_a_cursor_is_only_its_clients_and_survives_a_restart(
    api: Api, db: AsyncEngine, settings: Settings, gateway_url: str
) -> None:
    key = await marketer(db)
    other = await marketer(db, "crm")
    member = await add_member(db)
    await grant(db, member, PURPOSE)
    first = await export(api, key)
    cursor = (await manifest_of(api, key, first))["cursor"]
    await withdraw(db, member, PURPOSE)

    assert (await export(api, other, since=cursor)).status_code == 400
    assert (await export(api, key, since=str(uuid.uuid4()))).status_code == 400
    async with serving(settings, gateway_url) as restarted:
        [line] = rows(await export(restarted, key, since=cursor))
    assert (line["id"], line["action"]) == (str(member), "suppress")
    # Older than TILLIT_AUDIENCE_SYNC_DAYS (35): its changes may be pruned; export in full.
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE audience_exports SET started_at = started_at - interval '36 days'")
        )
    too_old = await export(api, key, since=cursor)
    assert too_old.status_code == 400
    assert "older than 35 days" in too_old.json()["errors"][0]["message"]


async def test_an_export_changes_nothing_but_the_log_and_its_own_record(
    api: Api, db: AsyncEngine
) -> None:
    key = await marketer(db)
    await grant(db, await add_member(db), PURPOSE)
    before = await row_counts(db)

    rows(await export(api, key))

    after = await row_counts(db)
    changed = {t for t in before if before[t] != after[t]}
    assert changed == {"access_events", "audience_exports"}


async def test_a_legitimate_interest_purpose_suppresses_an_objection(
    api: Api, db: AsyncEngine
) -> None:
    key = await marketer(db)
    member = await add_member(db)
    first = await export(api, key, purpose="data_quality")
    assert [line["id"] for line in rows(first)] == [str(member)]
    objected = await api.graphql(OBJECT, token=member_token(member))
    assert "errors" not in objected.json(), objected.text
    cursor = (await manifest_of(api, key, first))["cursor"]

    [line] = rows(await export(api, key, purpose="data_quality", since=cursor))

    assert (line["id"], line["action"], line["reason"]) == (str(member), "suppress", "OBJECTED")


async def test_a_change_of_the_purpose_itself_re_decides_everyone_it_concerns(
    api: Api, db: AsyncEngine, settings: Settings, gateway_url: str
) -> None:
    key = await marketer(db)
    members = [await add_member(db) for _ in range(2)]
    for member in members:
        await grant(db, member, PURPOSE)
    first = await export(api, key)
    cursor = (await manifest_of(api, key, first))["cursor"]
    # A new privacy notice no longer accepts the consents given on the old one; no member's
    # row changes.
    async with db.begin() as connection:
        await connection.execute(
            text(
                "UPDATE purposes SET notice_version = '2027-01', "
                "accepted_notice_versions = '{2027-01}', updated_at = now() WHERE key = :p"
            ),
            {"p": PURPOSE},
        )

    async with serving(settings, gateway_url) as fresh:  # not the old policy from a cache
        delta = await export(fresh, key, since=cursor)
        document = await manifest_of(fresh, key, delta)

    assert sorted((line["id"], line["action"], line["reason"]) for line in rows(delta)) == sorted(
        (str(member), "suppress", "NOTICE_OUTDATED") for member in members
    )
    assert document["policy_changed"] is True
