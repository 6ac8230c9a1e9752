"""The record-keeping commands: consents expiring, purge-expired, notices overdue, enrich import."""

from __future__ import annotations

import csv
import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.records.csv_files import ImportFileError
from gateway.records.enrich_import import check_file
from tests.conftest import add_member, row_counts, scalar, tillit
from tests.helpers import enrich, grant

NOW = dt.datetime.now(dt.UTC)


async def test_consents_expiring_lists_members_to_ask_for_renewal(
    db: AsyncEngine, cli_env: object
) -> None:
    soon = await add_member(db)
    later = await add_member(db)
    await grant(
        db,
        soon,
        "personalized_offers",
        granted_at=NOW - dt.timedelta(days=350),
        expires_at=NOW + dt.timedelta(days=10),
    )
    await grant(
        db, later, "personalized_offers", granted_at=NOW, expires_at=NOW + dt.timedelta(days=200)
    )

    result = await tillit("consents", "expiring", "--within", "30d", "--format", "csv")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.output.splitlines()))
    assert [(r["member_id"], r["purpose"]) for r in rows] == [(str(soon), "personalized_offers")]


async def test_consents_expiring_refuses_a_bad_window(cli_env: object) -> None:
    result = await tillit("consents", "expiring", "--within", "soon")

    assert result.exit_code == 2
    assert "unit" in result.output


async def test_purge_expired_closes_lapsed_consents_and_deletes_their_values(
    db: AsyncEngine, cli_env: object
) -> None:
    lapsed = await add_member(db)
    valid = await add_member(db)
    old_grant = await grant(
        db,
        lapsed,
        "personalized_offers",
        granted_at=NOW - dt.timedelta(days=400),
        expires_at=NOW - dt.timedelta(days=1),
    )
    await enrich(db, lapsed, old_grant)
    fresh_grant = await grant(db, valid, "personalized_offers")
    await enrich(db, valid, fresh_grant)

    first = await tillit("consents", "purge-expired")
    second = await tillit("consents", "purge-expired")

    assert "closed 1 expired consents; deleted 4 enriched values" in first.output
    assert "closed 0 expired consents" in second.output
    assert (
        await scalar(db, f"SELECT count(*) FROM enrichment_records WHERE member_id = '{lapsed}'")
        == 0
    )
    assert (
        await scalar(db, f"SELECT count(*) FROM enrichment_records WHERE member_id = '{valid}'")
        == 4
    )
    assert (
        await scalar(
            db,
            f"SELECT kind FROM consent_events WHERE member_id = '{lapsed}' "
            "ORDER BY seq DESC LIMIT 1",
        )
        == "EXPIRED"
    )
    assert (
        await scalar(db, "SELECT actor_kind FROM access_events WHERE operation = 'purgeExpired'")
        == "SYSTEM"
    )


async def test_purge_expired_passes_over_an_erased_members_lapsed_consent(
    db: AsyncEngine, cli_env: object
) -> None:
    """Erasure withdraws only consents in force: a lapsed grant stays an erased member's newest
    event, and the job must pass it by, not stop there on every run (it did: a foreign key)."""
    erased = await add_member(db)
    lapsed = await add_member(db)
    for member_id in (erased, lapsed):
        await grant(
            db,
            member_id,
            "personalized_offers",
            granted_at=NOW - dt.timedelta(days=400),
            expires_at=NOW - dt.timedelta(days=1),
        )
    forgotten = await tillit("members", "erase", str(erased), "--yes")
    assert forgotten.exit_code == 0, forgotten.output

    result = await tillit("consents", "purge-expired")

    assert result.exit_code == 0, result.output
    assert "closed 1 expired consents" in result.output
    assert (
        await scalar(
            db,
            f"SELECT kind FROM consent_events WHERE member_id = '{lapsed}' "
            "ORDER BY seq DESC LIMIT 1",
        )
        == "EXPIRED"
    )


async def test_notices_overdue_lists_undelivered_notices_past_due(
    db: AsyncEngine, cli_env: object
) -> None:
    member_id = await add_member(db)
    async with db.begin() as connection:
        for days_ago, delivered in ((40, False), (40, True), (5, False)):
            record = await connection.scalar(
                text(
                    "INSERT INTO cleansing_records (member_id, purpose_key, field, old_value, "
                    "new_value, source, recorded_at) VALUES (:m, 'data_quality', 'city', "
                    "'\"A\"', '\"B\"', 'register', :at) RETURNING id"
                ),
                {"m": member_id, "at": NOW - dt.timedelta(days=days_ago)},
            )
            await connection.execute(
                text(
                    "INSERT INTO member_notices (member_id, cleansing_record_id, kind, created_at, "
                    "due_at, delivered_at) VALUES (:m, :r, 'CLEANSING', :at, :due, :delivered)"
                ),
                {
                    "m": member_id,
                    "r": record,
                    "at": NOW - dt.timedelta(days=days_ago),
                    "due": NOW - dt.timedelta(days=days_ago - 30),
                    "delivered": NOW if delivered else None,
                },
            )

    result = await tillit("notices", "overdue", "--format", "csv")

    rows = list(csv.DictReader(result.output.splitlines()))
    assert len(rows) == 1
    assert rows[0]["member_id"] == str(member_id)
    assert rows[0]["field"] == "city"


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            header
            or ["member_id", "income_band", "household_size", "lifestyle_segment", "interests"]
        )
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"", 1, "empty"),
        (b"member_id;income_band\n1;2\n", 1, "wrong delimiter"),
        (b"income_band\nx\n", 1, "missing column `member_id`"),
        (b"member_id,shoe_size\nx,42\n", 1, "unknown column"),
        (b"member_id\nx\n", 1, "no value column"),
        (b"member_id,income_band\nx,ok\ny,\xff\xfe\n", 3, "not UTF-8"),
        # Beyond the csv module's field limit (131,072 characters): the line the row starts on.
        (b"member_id,income_band\nx,ok\ny," + b"a" * 131_073 + b"\nz,ok\n", 3, "field limit"),
        (b'member_id,income_band\nx,ok\ny,"a\n' + b"a" * 131_073 + b'"\n', 3, "field limit"),
    ],
    ids=[
        "empty",
        "semicolons",
        "no-member-column",
        "unknown-column",
        "no-values",
        "bad-encoding",
        "oversized-field",
        "oversized-field-over-lines",
    ],
)
def test_unreadable_files_are_refused_whole_with_line_and_reason(
    tmp_path: Path, content: bytes, line: int, reason: str
) -> None:
    path = tmp_path / "broker.csv"
    path.write_bytes(content)

    with pytest.raises(ImportFileError) as caught:
        check_file(path)

    assert caught.value.line == line
    assert reason in caught.value.reason


async def test_refused_file_writes_nothing(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    path = tmp_path / "broker.csv"
    path.write_bytes(b"member_id;income_band\n1;2\n")
    before = await row_counts(db)

    result = await tillit(
        "enrich", "import", str(path), "--source", "Broker", "--purpose", "personalized_offers"
    )

    assert result.exit_code == 1
    assert "line 1: wrong delimiter" in result.output
    assert "nothing was imported" in result.output
    assert await row_counts(db) == before


async def test_enrich_import_reject_file_defuses_formula_cells(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    # The reject file is opened in a spreadsheet to fix the rows: none of its cells may run.
    refused = ["=cmd|' /C calc'!A0", "+1", "-1", "@SUM(A1)", "\tx"]
    path = write_csv(tmp_path / "broker.csv", [refused])
    rejects = tmp_path / "rejects.csv"

    result = await tillit(
        "enrich",
        "import",
        str(path),
        "--source",
        "Broker AS",
        "--purpose",
        "personalized_offers",
        "--rejects",
        str(rejects),
    )

    assert result.exit_code == 0, result.output
    with rejects.open(encoding="utf-8", newline="") as handle:
        [_, [line, code, _, *cells]] = list(csv.reader(handle))
    assert (line, code) == ("2", "BAD_ROW")
    assert cells == ["'" + cell for cell in refused]


async def seed_consenting_members(db: AsyncEngine, count: int) -> list[uuid.UUID]:
    async with db.begin() as connection:
        # Bulk set-up, not a request: the gateway's 5 s statement timeout is not its bound (seen
        # exceeded on a busy shared machine).
        await connection.execute(text("SET LOCAL statement_timeout = 0"))
        ids = list(
            (
                await connection.execute(
                    text(
                        "INSERT INTO members (first_name, last_name, email) "
                        "SELECT 'Test', 'Member', 'bulk' || g || '@example.org' "
                        "FROM generate_series(1, :n) AS g RETURNING id"
                    ),
                    {"n": count},
                )
            ).scalars()
        )
        await connection.execute(
            text(
                "INSERT INTO consent_events (member_id, purpose_key, kind, method, "
                "notice_version, channel, actor_kind, expires_at) "
                "SELECT id, 'personalized_offers', 'GRANTED', 'EXPLICIT', '2026-01', 'test', "
                "'MEMBER', now() + interval '300 days' FROM members WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        )
    return ids


# Twenty batches: enough to cross batch boundaries with every kind of bad row. The speed of a
# 100,000-row import is measured by hand (README), not asserted here.
ROWS = 20_000


async def test_import_of_20k_rows_with_one_percent_bad(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    consenting = await seed_consenting_members(db, ROWS)
    unconsenting = [await add_member(db) for _ in range(3)]
    expected = {"BAD_ROW": 0, "NOT_FOUND": 0, "CONSENT_REQUIRED": 0}
    rows: list[list[str]] = []
    for i, member_id in enumerate(consenting):
        row = [str(member_id), "500-750k", str(1 + i % 6), "urban_family", "travel;books"]
        if i % 100 == 7:
            kind = (i // 100) % 5
            if kind == 0:
                row[0] = "not-a-uuid"
                expected["BAD_ROW"] += 1
            elif kind == 1:
                row[2] = "many"
                expected["BAD_ROW"] += 1
            elif kind == 2:
                row = row[:3]
                expected["BAD_ROW"] += 1
            elif kind == 3:
                row[0] = str(uuid.uuid4())
                expected["NOT_FOUND"] += 1
            else:
                row[0] = str(unconsenting[i % 3])
                expected["CONSENT_REQUIRED"] += 1
        rows.append(row)
    path = write_csv(tmp_path / "broker.csv", rows)
    rejects = tmp_path / "rejects.csv"

    result = await tillit(
        "enrich",
        "import",
        str(path),
        "--source",
        "Broker AS",
        "--purpose",
        "personalized_offers",
        "--rejects",
        str(rejects),
    )

    assert result.exit_code == 0, result.output
    refused = sum(expected.values())
    assert refused == ROWS // 100
    assert f"rows: {ROWS}" in result.output
    assert f"accepted: {ROWS - refused}" in result.output
    for code, count in expected.items():
        assert f"{code}: {count}" in result.output
    with rejects.open(encoding="utf-8") as handle:
        rejected = list(csv.reader(handle))[1:]
    assert len(rejected) == refused
    assert {r[1] for r in rejected} == set(expected)
    assert all(int(r[0]) >= 2 for r in rejected)
    assert await scalar(db, "SELECT count(*) FROM enrichment_records") == 4 * (ROWS - refused)
    assert (
        await scalar(db, "SELECT count(*) FROM access_events WHERE operation = 'enrichImport'")
        == ROWS - refused
    )


async def test_importing_the_same_file_again_changes_nothing(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    consenting = await seed_consenting_members(db, 300)
    rows = [[str(m), "<300k", "2", "young_urban", "books"] for m in consenting]
    rows[5][0] = "bad"
    path = write_csv(tmp_path / "broker.csv", rows)
    rejects = tmp_path / "rejects.csv"
    args = (
        "enrich",
        "import",
        str(path),
        "--source",
        "Broker AS",
        "--purpose",
        "personalized_offers",
        "--rejects",
        str(rejects),
    )
    first = await tillit(*args)
    counts = await row_counts(db)
    first_rejects = rejects.read_text(encoding="utf-8")

    again = await tillit(*args)

    assert "(299 members changed)" in first.output
    assert again.exit_code == 0, again.output
    assert "(0 members changed)" in again.output
    assert await row_counts(db) == counts
    assert rejects.read_text(encoding="utf-8") == first_rejects


async def test_import_stores_values_with_their_provenance(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "personalized_offers")
    path = write_csv(tmp_path / "broker.csv", [[str(member_id), ">1M", "", "", ""]])

    result = await tillit(
        "enrich", "import", str(path), "--source", "Broker AS", "--purpose", "personalized_offers"
    )

    assert "accepted: 1" in result.output
    async with db.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM enrichment_records"))).one()
    assert (row.field, row.value, row.source) == ("income_band", ">1M", "Broker AS")
