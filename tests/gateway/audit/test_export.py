"""What auditors get out of the trail: the access log, exports with manifests, the report,
retention; and the audit commands."""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import hashlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.app import create_app
from gateway.audit.export import (
    csv_cell_sql,
    csv_json_cell_sql,
    csv_list_cell_sql,
    defuse_csv_cell,
)
from gateway.audit.sealer import run_sealer, seal_until_current
from gateway.audit.sealing import SEAL_LOCK
from gateway.audit.verify import verify_export
from gateway.domain import Capability, Role
from gateway.signing import Signer, Verifier
from tests.conftest import (
    TEST_SECRET,
    TEST_SIGNER,
    Api,
    add_client,
    add_member,
    make_settings,
    member_token,
    scalar,
    tillit,
)
from tests.helpers import access_events, grant, verify, withdraw, write_events

NOW = dt.datetime.now(dt.UTC)
DAY_AGO = (NOW - dt.timedelta(days=1)).isoformat()
DAY_AHEAD = (NOW + dt.timedelta(days=1)).isoformat()

LOG = """
query($filter: AccessLogFilter, $first: Int!, $after: String) {
  accessLog(filter: $filter, first: $first, after: $after) {
    edges { cursor node { id operation memberId purpose outcome clientName clientRole
                          fieldsReleased fieldsWithheld { field code } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""


@pytest.fixture
async def auditor(db: AsyncEngine) -> str:
    return (await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())).key


async def read_members(api: Api, key: str, members: list[uuid.UUID], purpose: str) -> None:
    for member_id in members:
        await api.graphql(
            "query($id: ID!, $p: String!) { member(id: $id, purpose: $p) { email } }",
            {"id": str(member_id), "p": purpose},
            token=key,
        )


async def test_access_log_pages_newest_first_for_auditors(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    app_key = (await add_client(db, name="shop")).key
    members = [await add_member(db) for _ in range(5)]
    await read_members(api, app_key, members, "membership_service")

    first = (await api.graphql(LOG, {"first": 2}, token=auditor)).json()["data"]["accessLog"]
    second = (
        await api.graphql(LOG, {"first": 2, "after": first["pageInfo"]["endCursor"]}, token=auditor)
    ).json()["data"]["accessLog"]
    third = (
        await api.graphql(
            LOG, {"first": 2, "after": second["pageInfo"]["endCursor"]}, token=auditor
        )
    ).json()["data"]["accessLog"]

    seen = [e["node"]["memberId"] for page in (first, second, third) for e in page["edges"]]
    assert seen == [str(m) for m in reversed(members)]
    assert first["pageInfo"]["hasNextPage"] is True
    assert third["pageInfo"]["hasNextPage"] is False
    node = first["edges"][0]["node"]
    assert node["clientName"] == "shop"
    assert node["clientRole"] == "app"
    assert node["fieldsReleased"] == ["email"]


async def test_access_log_filters(api: Api, db: AsyncEngine, auditor: str) -> None:
    app_key = (await add_client(db, name="shop")).key
    target, other = await add_member(db), await add_member(db)
    await read_members(api, app_key, [target, other, target], "membership_service")
    await read_members(api, app_key, [target], "data_quality")

    by_member = await api.graphql(
        LOG, {"first": 50, "filter": {"memberId": str(target)}}, token=auditor
    )
    denied = await api.graphql(
        LOG,
        {"first": 50, "filter": {"memberId": str(target), "outcome": "DENIED"}},
        token=auditor,
    )
    window = await api.graphql(
        LOG, {"first": 50, "filter": {"from": DAY_AHEAD, "to": DAY_AHEAD}}, token=auditor
    )

    assert len(by_member.json()["data"]["accessLog"]["edges"]) == 3
    [refused] = denied.json()["data"]["accessLog"]["edges"]
    assert refused["node"]["purpose"] == "data_quality"
    assert {w["code"] for w in refused["node"]["fieldsWithheld"]} == {"PURPOSE_NOT_PERMITTED"}
    assert window.json()["data"]["accessLog"]["edges"] == []


FILTERED = """
query($filter: AccessLogFilter) {
  accessLog(filter: $filter, first: 50) {
    edges { node { requestId operation memberId actorMemberId outcome details } }
  }
}
"""


async def test_access_log_filters_by_request_operation_and_acting_member(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    app_key = (await add_client(db, name="shop")).key
    member = await add_member(db)
    await read_members(api, app_key, [member], "membership_service")
    tagged = await api.http.post(
        "/graphql",
        json={"query": "{ me { id } }"},
        headers={"Authorization": f"Bearer {member_token(member)}", "X-Request-ID": "req-42"},
    )

    def query(**where: str) -> Any:
        return api.graphql(FILTERED, {"filter": where}, token=auditor)

    by_request = (await query(requestId="req-42")).json()["data"]["accessLog"]["edges"]
    by_operation = (await query(operation="member")).json()["data"]["accessLog"]["edges"]
    by_actor = (await query(actingMemberId=str(member))).json()["data"]["accessLog"]["edges"]
    too_long = (await query(requestId="x" * 129)).json()

    assert tagged.status_code == 200
    assert [e["node"]["requestId"] for e in by_request] == ["req-42"]
    assert [e["node"]["operation"] for e in by_operation] == ["member"]
    assert {e["node"]["actorMemberId"] for e in by_actor} == {str(member)}
    assert {e["node"]["operation"] for e in by_actor} == {"me"}
    assert too_long["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_write_events_show_their_details_through_graphql(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    member = await add_member(db)
    await api.graphql(FILTERED, {"filter": {"operation": "nothing"}}, token=auditor)

    [read] = (
        await api.graphql(FILTERED, {"filter": {"operation": "accessLog"}}, token=auditor)
    ).json()["data"]["accessLog"]["edges"]
    refused = await api.graphql(
        'mutation($m: ID) { withdrawConsent(memberId: $m, purpose: "personalized_offers") '
        "{ withdrawn } }",
        {"m": str(member)},
        token=(await add_client(db, name="no-capability")).key,
    )
    [denied] = (
        await api.graphql(FILTERED, {"filter": {"operation": "withdrawConsent"}}, token=auditor)
    ).json()["data"]["accessLog"]["edges"]

    assert read["node"]["details"]["filter"]["operation"] == "nothing"
    assert read["node"]["details"]["returned"] == 0
    code = refused.json()["errors"][0]["extensions"]["code"]
    assert code in ("FORBIDDEN", "PURPOSE_NOT_PERMITTED")
    assert denied["node"]["outcome"] == "DENIED"
    assert denied["node"]["details"] == {"reason": code}  # the refusal's reason, as exported


async def test_reading_the_log_is_itself_audited(api: Api, db: AsyncEngine, auditor: str) -> None:
    member_id = uuid.uuid4()

    await api.graphql(LOG, {"first": 5, "filter": {"memberId": str(member_id)}}, token=auditor)

    [event] = await access_events(db)
    assert event["operation"] == "accessLog"
    assert event["member_id"] == member_id
    assert event["actor_kind"] == "CLIENT"
    assert event["details"]["returned"] == 0


@pytest.mark.parametrize("who", ["anonymous", "app", "member-token"])
async def test_access_log_is_for_auditors_only(api: Api, db: AsyncEngine, who: str) -> None:
    token = None
    if who == "app":
        token = (await add_client(db, name="shop")).key
    elif who == "member-token":
        token = mint_member_token(await add_member(db), TEST_SECRET, dt.timedelta(minutes=5))

    body = (await api.graphql(LOG, {"first": 5}, token=token)).json()

    assert body["data"] == {"accessLog": None}
    expected = "UNAUTHENTICATED" if who == "anonymous" else "FORBIDDEN"
    assert body["errors"][0]["extensions"]["code"] == expected


@pytest.mark.parametrize("operation", ["accessLog", "transparencyReport"])
async def test_a_refused_look_at_the_log_is_an_access_event(
    api: Api, db: AsyncEngine, operation: str
) -> None:
    shop = await add_client(db, name="shop")
    member_id = await add_member(db)
    if operation == "accessLog":
        document, variables = LOG, {"first": 5, "filter": {"memberId": str(member_id)}}
    else:
        document, variables = REPORT, {"from": DAY_AGO, "to": DAY_AHEAD}

    body = (await api.graphql(document, variables, token=shop.key)).json()

    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    [event] = await access_events(db)
    assert event["operation"] == operation
    assert event["outcome"] == "DENIED"
    assert event["client_id"] == shop.id
    assert event["details"]["reason"] == "FORBIDDEN"
    assert event["member_id"] == (member_id if operation == "accessLog" else None)


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"first": 0}, "BAD_USER_INPUT"),
        ({"first": 501}, "BAD_USER_INPUT"),
        ({"first": 5, "after": "not-a-cursor"}, "BAD_USER_INPUT"),
        ({"first": 5, "filter": {"memberId": "x"}}, "BAD_USER_INPUT"),
    ],
)
async def test_bad_log_arguments_are_refused(
    api: Api, db: AsyncEngine, auditor: str, variables: dict[str, Any], code: str
) -> None:
    body = (await api.graphql(LOG, variables, token=auditor)).json()

    assert body["errors"][0]["extensions"]["code"] == code


REPORT = """
query($from: DateTime!, $to: DateTime!) { transparencyReport(from: $from, to: $to) {
  accesses accessesByPurpose { key count } accessesByOutcome { key count }
  accessesByClient { key count } withheldReasons { key count }
  consentsGranted { key count } consentsWithdrawn { key count }
  enrichmentRecords cleansingRecords objections noticesOverdue } }
"""


async def test_transparency_report_counts_a_known_fixture(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    app_key = (await add_client(db, name="shop")).key
    members = [await add_member(db) for _ in range(3)]
    await read_members(api, app_key, members, "membership_service")  # 3 released
    await read_members(api, app_key, members[:2], "data_quality")  # 2 DENIED
    await grant(db, members[0], "personalized_offers", granted_at=NOW)
    await grant(db, members[1], "personalized_offers", granted_at=NOW)
    await withdraw(db, members[1], "personalized_offers")
    objected = await api.graphql(
        'mutation { objectToProcessing(purpose: "data_quality") { alreadyObjected } }',
        token=member_token(members[2]),
    )
    assert objected.json()["data"]["objectToProcessing"]["alreadyObjected"] is False

    body = (await api.graphql(REPORT, {"from": DAY_AGO, "to": DAY_AHEAD}, token=auditor)).json()

    report = body["data"]["transparencyReport"]
    flat = {
        k: {c["key"]: c["count"] for c in v} if isinstance(v, list) else v
        for k, v in report.items()
    }
    assert flat["accesses"] == 6
    assert flat["accessesByOutcome"] == {"RELEASED": 3, "DENIED": 2, "WRITTEN": 1}
    assert flat["accessesByPurpose"] == {"membership_service": 3, "data_quality": 3}
    assert flat["accessesByClient"] == {"shop": 5, "member": 1}
    assert flat["withheldReasons"] == {"PURPOSE_NOT_PERMITTED": 2}
    assert flat["consentsGranted"] == {"personalized_offers": 2}
    assert flat["consentsWithdrawn"] == {"personalized_offers": 1}
    assert flat["objections"] == 1
    assert flat["enrichmentRecords"] == flat["cleansingRecords"] == flat["noticesOverdue"] == 0


async def test_a_past_period_keeps_its_enrichment_count_after_the_values_are_purged(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    broker = await add_client(
        db, name="broker", purposes=("personalized_offers",), capabilities=(Capability.ENRICH,)
    )
    member = await add_member(db)
    await grant(db, member, "personalized_offers", granted_at=NOW)
    enriched = await api.graphql(
        'mutation($m: ID!) { recordEnrichment(memberId: $m, purpose: "personalized_offers", '
        'source: "Broker", values: {incomeBand: "500-750k", lifestyleSegment: "urban"}) '
        "{ written } }",
        {"m": str(member)},
        token=broker.key,
    )
    assert enriched.json()["data"]["recordEnrichment"]["written"] == [
        "income_band",
        "lifestyle_segment",
    ]

    async def enrichment_records() -> int:
        body = await api.graphql(REPORT, {"from": DAY_AGO, "to": DAY_AHEAD}, token=auditor)
        count: int = body.json()["data"]["transparencyReport"]["enrichmentRecords"]
        return count

    before = await enrichment_records()
    withdrawn = await api.graphql(
        'mutation { withdrawConsent(purpose: "personalized_offers") { purgedFields } }',
        token=member_token(member),
    )
    assert withdrawn.json()["data"]["withdrawConsent"]["purgedFields"] == [
        "income_band",
        "lifestyle_segment",
    ]
    after = await enrichment_records()

    assert before == after == 2


# -- export ---------------------------------------------------------------------------------------


async def sealed_reads(api: Api, db: AsyncEngine, count: int = 3) -> None:
    app_key = (await add_client(db, name="shop")).key
    await read_members(
        api, app_key, [await add_member(db) for _ in range(count)], "membership_service"
    )
    await seal_until_current(db, TEST_SIGNER)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_export_streams_sealed_events_and_its_manifest_verifies(
    api: Api, db: AsyncEngine, auditor: str, fmt: str, tmp_path: Path
) -> None:
    await sealed_reads(api, db)
    params = {"from": DAY_AGO, "to": DAY_AHEAD, "format": fmt}
    headers = {"Authorization": f"Bearer {auditor}"}

    body = await api.http.get("/audit/export", params=params, headers=headers)
    checkpoint = body.headers["x-tillit-checkpoint"]
    manifest = await api.http.get(
        "/audit/export/manifest", params={**params, "checkpoint": checkpoint}, headers=headers
    )

    assert body.status_code == 200
    assert manifest.status_code == 200
    document = manifest.json()
    assert document["rows"] == 3
    assert document["checkpoint"]["id"] == int(checkpoint)
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(body.text)))
        assert [r["position"] for r in rows] == ["1", "2", "3"]
        assert rows[0]["fields_released"] == "email"
    else:
        rows = [json.loads(line) for line in body.text.splitlines()]
        assert [r["position"] for r in rows] == [1, 2, 3]
        assert rows[0]["fields_released"] == ["email"]
    exported = tmp_path / f"log.{fmt}"
    exported.write_bytes(body.content)
    (tmp_path / "m.json").write_text(manifest.text, encoding="utf-8")
    assert verify_export(exported, tmp_path / "m.json", TEST_SIGNER.verifier).ok
    changed = bytearray(body.content)
    changed[-5] ^= 1
    exported.write_bytes(bytes(changed))
    report = verify_export(exported, tmp_path / "m.json", TEST_SIGNER.verifier)
    assert not report.ok
    assert "SHA-256" in report.problems[0]


async def test_the_signed_formats_are_what_the_readme_says_byte_for_byte(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    """Recomputed from README's "Signed formats" with hashlib, json and cryptography alone."""
    await sealed_reads(api, db)
    params = {"from": DAY_AGO, "to": DAY_AHEAD, "format": "jsonl"}
    headers = {"Authorization": f"Bearer {auditor}"}
    body = await api.http.get("/audit/export", params=params, headers=headers)
    manifest = (
        await api.http.get(
            "/audit/export/manifest",
            params={**params, "checkpoint": body.headers["x-tillit-checkpoint"]},
            headers=headers,
        )
    ).json()
    async with db.connect() as connection:
        [checkpoint] = (
            (
                await connection.execute(
                    text("SELECT * FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
                )
            )
            .mappings()
            .all()
        )
    public = Ed25519PublicKey.from_public_bytes(
        base64.b64decode(TEST_SIGNER.verifier.public_base64)
    )

    def sorted_json(value: Any, *, ascii_only: bool = False) -> bytes:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only
        ).encode()

    leaves = []
    for line in body.text.splitlines():
        event = json.loads(line)
        given = bytes.fromhex(event.pop("event_hash"))
        event.pop("position")
        leaves.append(hashlib.sha256(b"\x00" + sorted_json(event)).digest())
        assert leaves[-1] == given
    left, right = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest(), leaves[2]
    assert checkpoint["batch_root"] == hashlib.sha256(b"\x01" + left + right).digest()
    content = b"tillit-checkpoint-v1\n" + sorted_json(
        {
            "id": checkpoint["id"],
            "kind": checkpoint["kind"],
            "created_at": checkpoint["created_at"].isoformat(timespec="microseconds"),
            "first_position": checkpoint["first_position"],
            "last_position": checkpoint["last_position"],
            "event_count": checkpoint["event_count"],
            "horizon": str(checkpoint["horizon"]),
            "batch_root": checkpoint["batch_root"].hex(),
            "previous_hash": checkpoint["previous_hash"].hex(),
            "details": checkpoint["details"],
        }
    )
    assert checkpoint["checkpoint_hash"] == hashlib.sha256(content).digest()
    public.verify(checkpoint["signature"], checkpoint["checkpoint_hash"])  # raises if not
    assert checkpoint["key_id"] == hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    message = b"tillit-export-manifest-v1\n" + sorted_json(unsigned, ascii_only=True)
    public.verify(bytes.fromhex(manifest["signature"]), message)
    assert manifest["sha256"] == hashlib.sha256(body.content).hexdigest()


FORMULA_CELLS = [
    '=HYPERLINK("x")',
    "+1",
    "-1",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "\nx",
    " =1+1",
    "  +1",
    "\t=1",
    "\u00a0-1",
    "\u3000@SUM(A1)",
    "\uff1d1+1",
    "\uff0b1",
    "\uff0d1",
    "\uff20SUM(A1)",
    " \uff1d1",
]
SAFE_CELLS = ["safe", "", " ", " x", "x=1", "a-b", "\u3000x", "1", "'=1"]
# Every character Python counts as white space (all of them are below U+10000).
WHITE_SPACE = [chr(c) for c in range(0x10000) if chr(c).isspace()]


@pytest.mark.parametrize("value", FORMULA_CELLS)
async def test_csv_cells_are_defused_against_formula_injection(
    conn: AsyncConnection, value: str
) -> None:
    cell = text(f"SELECT {csv_cell_sql('CAST(:v AS text)')}")

    assert await conn.scalar(cell, {"v": value}) == "'" + value
    assert await conn.scalar(cell, {"v": "safe"}) == "safe"


@pytest.mark.parametrize("value", SAFE_CELLS)
async def test_csv_cells_that_cannot_start_a_formula_are_kept_as_they_are(
    conn: AsyncConnection, value: str
) -> None:
    cell = text(f"SELECT {csv_cell_sql('CAST(:v AS text)')}")

    assert await conn.scalar(cell, {"v": value}) == value


async def test_any_white_space_before_a_formula_character_is_defused(
    conn: AsyncConnection,
) -> None:
    values = [space * 2 + start + "1" for space in WHITE_SPACE for start in "=+-@\uff1d\uff0b"]
    cells = text(
        f"SELECT {csv_cell_sql('v')} FROM unnest(CAST(:vs AS text[])) WITH ORDINALITY AS u(v, n) "
        "ORDER BY n"
    )

    defused = (await conn.execute(cells, {"vs": values})).scalars().all()

    assert [v for v, cell in zip(values, defused, strict=True) if cell != "'" + v] == []


async def test_the_sql_defusal_and_the_python_one_are_one_rule(conn: AsyncConnection) -> None:
    # Exports are defused by PostgreSQL, the CLI's CSV and the imports' reject files by Python.
    values = [
        *FORMULA_CELLS,
        *SAFE_CELLS,
        *(space + start for space in WHITE_SPACE for start in "=\uff20x"),
    ]
    cells = text(
        f"SELECT {csv_cell_sql('v')} FROM unnest(CAST(:vs AS text[])) WITH ORDINALITY AS u(v, n) "
        "ORDER BY n"
    )

    in_sql = (await conn.execute(cells, {"vs": values})).scalars().all()

    assert in_sql == [defuse_csv_cell(v) for v in values]


@pytest.mark.parametrize(
    ("array", "defused"),
    [
        ([], False),
        (["tier"], False),
        (["=x", "tier"], True),
        (["tier", "=x"], False),
        ([None, "=x"], True),
        ([None, "tier"], False),
        (["", "-1"], False),
        (["-1"], True),
        ([None], False),
        (["\tx"], True),
        (["\nx"], True),
        ([" =x"], True),
        ([" x", "=x"], False),
        (["\uff1dx"], True),
        (["\u3000\uff20x"], True),
        ([" "], False),
    ],
)
async def test_a_list_cell_is_defused_as_its_joined_text_would_be(
    conn: AsyncConnection, array: list[str | None], defused: bool
) -> None:
    # The list cell decides on the first element when it can; the bytes must be those of the
    # general rule applied to the joined text.
    values = {"a": array}
    listed = await conn.scalar(text(f"SELECT {csv_list_cell_sql('CAST(:a AS text[])')}"), values)
    joined = "array_to_string(CAST(:a AS text[]), ';')"
    general = await conn.scalar(text(f"SELECT {csv_cell_sql(joined)}"), values)

    assert listed == general
    assert listed.startswith("'") is defused


@pytest.mark.parametrize(
    "document", ['{"a": "=x"}', '"=x"', "-1", "1", "-0.5", "[-1]", "null", "true", "{}"]
)
async def test_a_json_cell_is_defused_as_its_text_would_be(
    conn: AsyncConnection, document: str
) -> None:
    values = {"d": document}
    cell = await conn.scalar(text(f"SELECT {csv_json_cell_sql('CAST(:d AS jsonb)')}"), values)
    general = await conn.scalar(text(f"SELECT {csv_cell_sql('CAST(:d AS jsonb)::text')}"), values)

    assert cell == general
    assert cell.startswith("'") == document.startswith("-")


async def test_a_nul_cannot_reach_an_export(conn: AsyncConnection) -> None:
    # The COPY export has no NUL case because PostgreSQL text cannot hold one.
    with pytest.raises(DBAPIError):
        await conn.execute(text("SELECT CAST(:v AS text)"), {"v": "\0x"})


async def test_a_declared_purpose_cannot_inject_a_formula_into_the_export(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    app_key = (await add_client(db, name="shop")).key
    await read_members(api, app_key, [await add_member(db)], "=cmd|' /C calc'!A0")
    await seal_until_current(db, TEST_SIGNER)

    body = await api.http.get(
        "/audit/export",
        params={"from": DAY_AGO, "to": DAY_AHEAD},
        headers={"Authorization": f"Bearer {auditor}"},
    )

    [row] = list(csv.DictReader(io.StringIO(body.text)))
    assert row["purpose"].startswith("'=")


async def test_export_of_a_range_holds_only_that_range(
    api: Api, db: AsyncEngine, auditor: str
) -> None:
    await sealed_reads(api, db)

    body = await api.http.get(
        "/audit/export",
        params={"from": DAY_AHEAD, "to": (NOW + dt.timedelta(days=2)).isoformat()},
        headers={"Authorization": f"Bearer {auditor}"},
    )

    assert list(csv.DictReader(io.StringIO(body.text))) == []


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"from": DAY_AHEAD, "to": DAY_AGO}, 400, "BAD_USER_INPUT"),
        ({"from": "yesterday", "to": DAY_AHEAD}, 400, "BAD_USER_INPUT"),
        ({"from": DAY_AGO}, 400, "BAD_USER_INPUT"),
        ({"from": DAY_AGO, "to": DAY_AHEAD, "format": "xlsx"}, 400, "BAD_USER_INPUT"),
        ({"from": DAY_AGO, "to": DAY_AHEAD, "checkpoint": "x"}, 400, "BAD_USER_INPUT"),
    ],
)
async def test_bad_export_requests_are_4xx_json(
    api: Api, db: AsyncEngine, auditor: str, params: dict[str, str], status: int, code: str
) -> None:
    await sealed_reads(api, db, 1)

    response = await api.http.get(
        "/audit/export", params=params, headers={"Authorization": f"Bearer {auditor}"}
    )

    assert response.status_code == status
    assert response.json()["errors"][0]["extensions"]["code"] == code


@pytest.mark.parametrize(("who", "status"), [("anonymous", 401), ("app", 403), ("bad-key", 401)])
async def test_export_is_for_auditors_only(
    api: Api, db: AsyncEngine, who: str, status: int
) -> None:
    headers = {}
    if who == "app":
        headers["Authorization"] = f"Bearer {(await add_client(db, name='shop')).key}"
    elif who == "bad-key":
        headers["Authorization"] = "Bearer tk_nope"

    response = await api.http.get(
        "/audit/export", params={"from": DAY_AGO, "to": DAY_AHEAD}, headers=headers
    )

    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")


async def test_exports_are_audited(api: Api, db: AsyncEngine, auditor: str) -> None:
    await sealed_reads(api, db, 1)

    await api.http.get(
        "/audit/export",
        params={"from": DAY_AGO, "to": DAY_AHEAD},
        headers={"Authorization": f"Bearer {auditor}"},
    )

    operations = [e["operation"] for e in await access_events(db)]
    assert operations[-1] == "auditExport"


# -- retention and the sealer in the gateway ------------------------------------------------------


async def test_retention_drops_old_partitions_and_verify_still_passes(
    db: AsyncEngine, cli_env: object
) -> None:
    last_month = (NOW.replace(day=1) - dt.timedelta(days=1)).replace(day=15)
    async with db.begin() as connection:
        await connection.execute(
            text("SELECT tillit_ensure_audit_partitions(CAST(:m AS date), 2)"),
            {"m": last_month.date()},
        )
        await connection.execute(
            text(
                "INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, "
                "outcome) SELECT :at, 'old', 'member', 'SYSTEM', 'RELEASED' "
                "FROM generate_series(1, 4)"
            ),
            {"at": last_month},
        )
    await write_events(db, 3)
    await seal_until_current(db, TEST_SIGNER)
    partition = f"access_events_{last_month:%Y_%m}"

    result = await tillit("audit", "retention", "--older-than", "0m")

    assert result.exit_code == 0, result.output
    assert f"dropped {partition} (4 events)" in result.output
    assert await scalar(db, f"SELECT to_regclass('{partition}') IS NULL") is True
    assert await scalar(db, "SELECT count(*) FROM access_events") == 3
    report = await verify(db)
    assert report.ok, report.problems
    assert (report.events, report.dropped) == (3, 4)
    verified = await tillit("audit", "verify")
    assert verified.exit_code == 0
    assert "OK:" in verified.output


async def test_retention_refuses_to_drop_unsealed_events(db: AsyncEngine, cli_env: object) -> None:
    last_month = (NOW.replace(day=1) - dt.timedelta(days=1)).replace(day=15)
    await seal_until_current(db, TEST_SIGNER)
    async with db.begin() as connection:
        await connection.execute(
            text("SELECT tillit_ensure_audit_partitions(CAST(:m AS date), 2)"),
            {"m": last_month.date()},
        )
        await connection.execute(
            text(
                "INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, "
                "outcome) VALUES (:at, 'late', 'member', 'SYSTEM', 'RELEASED')"
            ),
            {"at": last_month},
        )

    result = await tillit("audit", "retention", "--older-than", "0m")

    assert result.exit_code == 1
    assert "not sealed yet" in result.output


async def test_the_gateway_seals_in_the_background(db: AsyncEngine, gateway_url: str) -> None:
    # As the restricted role: the gateway can seal, and add partitions, without owning anything.
    app = create_app(
        make_settings(gateway_url, seal_interval_seconds=0.05), database_url=gateway_url
    )
    await write_events(db, 2)
    async with LifespanManager(app):
        for _ in range(100):
            sealed = await scalar(db, "SELECT count(*) FROM audit_seals")
            if sealed == 2:
                break
            await asyncio.sleep(0.05)
    assert await scalar(db, "SELECT count(*) FROM audit_seals") == 2
    assert (await verify(db)).ok


async def test_a_sealer_behind_seals_batch_after_batch_without_waiting(
    db: AsyncEngine, gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More final events than one batch holds: the sealer goes on until it has caught up, not
    one batch per interval (which would fall further behind under a steady load)."""
    from gateway.audit import sealer

    monkeypatch.setattr(sealer, "MAX_BATCH", 3)
    app = create_app(
        make_settings(gateway_url, seal_interval_seconds=3600), database_url=gateway_url
    )
    await write_events(db, 10)
    async with LifespanManager(app):
        for _ in range(100):
            if await scalar(db, "SELECT count(*) FROM audit_seals") == 10:
                break
            await asyncio.sleep(0.05)
    assert await scalar(db, "SELECT count(*) FROM audit_seals") == 10
    assert await scalar(db, "SELECT max(event_count) FROM audit_checkpoints") == 3
    assert (await verify(db)).ok


# -- the audit commands ---------------------------------------------------------------------------


async def test_audit_seal_waits_for_a_running_sealer_to_pass_now(
    api: Api, db: AsyncEngine, cli_env: object
) -> None:
    app_key = (await add_client(db, name="shop")).key
    stop = asyncio.Event()
    # A gateway's sealer, holding the sealer lock, on a long interval: it seals once now (nothing
    # yet), and next only when the command's wait has begun.
    running = asyncio.create_task(run_sealer(db, TEST_SIGNER, interval=1.0, stop=stop))
    try:
        await asyncio.sleep(0.3)
        await read_members(
            api, app_key, [await add_member(db) for _ in range(3)], "membership_service"
        )

        sealed = await tillit("audit", "seal", "--wait", "30")
    finally:
        stop.set()
        await running

    assert sealed.exit_code == 0, sealed.output
    assert "sealed 3 events up to now" in sealed.output
    assert await scalar(db, "SELECT count(*) FROM audit_seals") == 3


async def test_audit_seal_gives_up_after_its_wait(db: AsyncEngine, cli_env: object) -> None:
    async with db.connect() as holder:  # a sealer that holds the lock and never seals
        await holder.execute(text(f"SELECT pg_advisory_lock({SEAL_LOCK})"))
        await holder.commit()
        try:
            sealed = await tillit("audit", "seal", "--wait", "0.5")
        finally:
            await holder.execute(text(f"SELECT pg_advisory_unlock({SEAL_LOCK})"))
            await holder.commit()

    assert sealed.exit_code == 1
    assert "did not seal up to now within 0.5 s" in sealed.output


async def test_audit_commands_seal_export_verify_and_report(
    api: Api, db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    app_key = (await add_client(db, name="shop")).key
    await read_members(api, app_key, [await add_member(db) for _ in range(4)], "membership_service")
    out_file = tmp_path / "log.csv"
    html = tmp_path / "report.html"

    sealed = await tillit("audit", "seal")
    exported = await tillit(
        "audit", "export", "--from", DAY_AGO, "--to", DAY_AHEAD, "--out", str(out_file)
    )
    verified = await tillit("audit", "verify", "--export", str(out_file))
    reported = await tillit("report", "--from", DAY_AGO, "--to", DAY_AHEAD, "--out", str(html))

    assert "sealed 4 events up to now" in sealed.output
    assert "4 rows" in exported.output, exported.output
    assert verified.exit_code == 0, verified.output
    assert reported.exit_code == 0, reported.output
    page = html.read_text(encoding="utf-8")
    assert "<svg" in page
    assert "membership_service" in page
    assert "<script" not in page
    out_file.write_text(
        out_file.read_text(encoding="utf-8").replace("RELEASED", "DENIED"), encoding="utf-8"
    )
    tampered = await tillit("audit", "verify", "--export", str(out_file))
    assert tampered.exit_code == 1
    assert "SHA-256" in tampered.output


async def test_audit_verify_exits_non_zero_without_checkpoints(
    db: AsyncEngine, cli_env: object
) -> None:
    result = await tillit("audit", "verify")

    assert result.exit_code == 1
    assert "no checkpoints yet" in result.output


async def test_keygen_prints_a_usable_key_pair(cli_env: object) -> None:
    result = await tillit("audit", "keygen")

    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    signer = Signer.from_base64(values["TILLIT_AUDIT_SIGNING_KEY"])
    verifier = Verifier.from_base64(values["TILLIT_AUDIT_VERIFY_KEY"])
    assert verifier.verify(signer.sign(b"x"), b"x")


async def test_audit_verify_warns_when_the_newest_checkpoint_is_stale(
    db: AsyncEngine, cli_env: object
) -> None:
    await write_events(db, 2)
    await seal_until_current(db, TEST_SIGNER)
    fresh = await tillit("audit", "verify")
    await asyncio.sleep(0.3)  # no sealer runs: the newest checkpoint only ages

    stale = await tillit("audit", "verify", "--max-age", "0.1")
    unchecked = await tillit("audit", "verify", "--max-age", "0")

    assert fresh.exit_code == 0, fresh.output
    assert stale.exit_code == 2
    assert "OK:" in stale.output
    assert "WARNING: the newest checkpoint is" in stale.output
    assert "no sealer has written one since" in stale.output
    assert unchecked.exit_code == 0


async def test_an_export_streams_past_the_request_statement_timeout(
    db: AsyncEngine, database_url: str
) -> None:
    """An export may stream for minutes: the connection's client-side deadline (a request's
    statement timeout, here 0.2 s, so 1.2 s) must not cut a COPY that a slow reader holds up."""
    from bench.seed import seed_events
    from gateway.audit.export import ExportRange, covering_checkpoint, export_chunks
    from gateway.store.db import create_engine

    await seed_events(db, count=20_000, signer=TEST_SIGNER, spacing_seconds=0.01)
    engine = create_engine(database_url, make_settings(database_url, db_statement_timeout_ms=200))
    export = ExportRange(
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC), "csv"
    )
    lines = 0
    try:
        async with engine.begin() as connection:
            checkpoint = await covering_checkpoint(connection)
            async for chunk in export_chunks(connection, export, checkpoint):
                lines += chunk.count(b"\n")
                await asyncio.sleep(0.1)  # a slow reader: the COPY waits on its queue
    finally:
        await engine.dispose()

    assert lines == 20_001


async def test_a_csv_export_goes_out_in_large_pieces_with_jit_off(
    db: AsyncEngine, database_url: str
) -> None:
    """COPY arrives in ~10 kB network reads; the export passes them on in pieces of at least
    256 kB (all but the last), so the response path runs per piece, not per read. JIT is off
    for the export's transaction (compiling the cell expressions cost more than it saved)."""
    from bench.seed import seed_events
    from gateway.audit.export import _CHUNK_BYTES, ExportRange, covering_checkpoint, export_chunks
    from gateway.store.db import create_engine

    await seed_events(db, count=5_000, signer=TEST_SIGNER, spacing_seconds=0.01)
    engine = create_engine(database_url, make_settings(database_url))
    export = ExportRange(
        dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC), "csv"
    )
    try:
        async with engine.begin() as connection:
            checkpoint = await covering_checkpoint(connection)
            sizes = [len(chunk) async for chunk in export_chunks(connection, export, checkpoint)]
            jit = await connection.scalar(text("SHOW jit"))
    finally:
        await engine.dispose()

    assert sum(sizes) > 2 * _CHUNK_BYTES  # enough bytes for several pieces
    assert all(size >= _CHUNK_BYTES for size in sizes[:-1])
    assert len(sizes) <= sum(sizes) // _CHUNK_BYTES + 1
    assert jit == "off"
