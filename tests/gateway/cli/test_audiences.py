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
