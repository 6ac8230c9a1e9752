"""`tillit audience export`: the audience to a file with its signed manifest, and a sync from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.verify import manifest_content
from tests.conftest import TEST_SIGNER, add_member, tillit
from tests.helpers import grant, withdraw

PURPOSE = "email_marketing"


def lines_of(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


async def test_the_command_exports_syncs_and_audits_as_the_system(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    stays, leaves = await add_member(db), await add_member(db)
    await add_member(db)  # never asked
    for member in (stays, leaves):
        await grant(db, member, PURPOSE)
    full = tmp_path / "audience.csv"

    result = await tillit("audience", "export", "--purpose", PURPOSE, "--out", str(full))

    assert result.exit_code == 0, result.output
    assert sorted(line["id"] for line in lines_of(full)) == sorted([str(stays), str(leaves)])
    manifest = json.loads((tmp_path / "audience.csv.manifest.json").read_text())
    assert manifest["rows"] == 2
    assert manifest["bytes"] == full.stat().st_size
    TEST_SIGNER.verifier.verify(bytes.fromhex(manifest["signature"]), manifest_content(manifest))
    async with db.connect() as connection:
        actors = (
            await connection.execute(
                text(
                    "SELECT DISTINCT actor_kind FROM access_events "
                    "WHERE operation = 'audienceExport'"
                )
            )
        ).scalars()
        assert list(actors) == ["SYSTEM"]

    await withdraw(db, leaves, PURPOSE)
    delta = tmp_path / "delta.csv"
    result = await tillit(
        "audience",
        "export",
        "--purpose",
        PURPOSE,
        "--out",
        str(delta),
        "--since",
        manifest["cursor"],
    )

    assert result.exit_code == 0, result.output
    assert [(line["id"], line["action"], line["reason"]) for line in lines_of(delta)] == [
        (str(leaves), "suppress", "CONSENT_WITHDRAWN")
    ]


async def test_bad_arguments_are_refused_before_anything_is_written(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    for args in (
        ["--where", "{"],
        ["--where", '{"incomeBand": ["high"]}'],  # not released by email_marketing
        ["--format", "xlsx"],
        ["--since", "not-a-cursor"],
    ):
        result = await tillit("audience", "export", "--purpose", PURPOSE, "--out", str(out), *args)
        assert result.exit_code != 0, args
    assert not out.exists()
    async with db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM audience_exports")) == 0


async def test_prune_forgets_only_changes_no_sync_can_ask_for(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    member = await add_member(db)
    await grant(db, member, PURPOSE)
    full = tmp_path / "audience.csv"
    assert (
        await tillit("audience", "export", "--purpose", PURPOSE, "--out", str(full))
    ).exit_code == 0
    cursor = json.loads((tmp_path / "audience.csv.manifest.json").read_text())["cursor"]
    await withdraw(db, member, PURPOSE)
    async with db.connect() as connection:
        before = await connection.scalar(text("SELECT count(*) FROM member_changes"))

    pruned = await tillit("audience", "prune")

    assert pruned.exit_code == 0, pruned.output
    async with db.connect() as connection:
        after = await connection.scalar(text("SELECT count(*) FROM member_changes"))
    # The member's joining and grant came before the export and are gone; the withdrawal after
    # it is kept, and the sync still finds it.
    assert isinstance(before, int)
    assert isinstance(after, int)
    assert 0 < after < before
    delta = tmp_path / "delta.csv"
    synced = await tillit(
        "audience", "export", "--purpose", PURPOSE, "--out", str(delta), "--since", cursor
    )
    assert synced.exit_code == 0, synced.output
    assert [(line["id"], line["action"]) for line in lines_of(delta)] == [(str(member), "suppress")]


async def test_a_sync_from_an_export_older_than_the_window_is_refused(
    db: AsyncEngine, cli_env: object, tmp_path: Path
) -> None:
    await grant(db, await add_member(db), PURPOSE)
    full = tmp_path / "audience.csv"
    assert (
        await tillit("audience", "export", "--purpose", PURPOSE, "--out", str(full))
    ).exit_code == 0
    cursor = json.loads((tmp_path / "audience.csv.manifest.json").read_text())["cursor"]
    async with db.begin() as connection:
        await connection.execute(
            text("UPDATE audience_exports SET started_at = started_at - interval '36 days'")
        )

    result = await tillit(
        "audience",
        "export",
        "--purpose",
        PURPOSE,
        "--out",
        str(tmp_path / "d.csv"),
        "--since",
        cursor,
    )

    assert result.exit_code != 0
    assert "older than 35 days" in result.output
