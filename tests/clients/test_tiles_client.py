"""A standard tlog-tiles client reads the log: Go's golang.org/x/mod/sumdb/tlog and sumdb/note
(Debian's golang-go and golang-golang-x-mod-dev), run from tests/clients/tiles/main.go against
the gateway on a real port. It checks the checkpoint's signature, every tile it reads against
the signed root, record inclusion and an older checkpoint's tree (consistency)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.sealer import seal_until_current
from gateway.notes import NoteKey
from tests.conftest import TEST_SIGNER, listening, make_settings
from tests.helpers import write_events

HERE = Path(__file__).resolve().parent / "tiles"
GO_PATH = "/usr/share/gocode"  # where Debian's golang-golang-x-mod-dev puts the source


def go_or_skip() -> str:
    go = shutil.which("go")
    if go is None or not Path(GO_PATH, "src/golang.org/x/mod/sumdb/tlog").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's golang-go and golang-golang-x-mod-dev (.ci/run)")
        pytest.skip("needs Debian's golang-go and golang-golang-x-mod-dev (apt-get install)")
    return go


@pytest.mark.timeout(300)
async def test_gos_tlog_client_proves_records_and_trees_from_the_tiles(
    db: AsyncEngine, gateway_url: str, tmp_path: Path
) -> None:
    go = go_or_skip()
    # Checkpoints of 300 and 1,000 events: level-0 tiles full and partial, a level-1 tile.
    for count in (300, 700):
        await write_events(db, count, request=f"r{count}")
        await seal_until_current(db, TEST_SIGNER)
    vkey = NoteKey.of_log(TEST_SIGNER.origin, TEST_SIGNER.verifier).vkey

    async with listening(make_settings(gateway_url), gateway_url) as url:
        finished = await asyncio.to_thread(
            subprocess.run,
            [go, "run", "main.go", url, vkey, "300"],
            cwd=HERE,
            env={
                **os.environ,
                "GO111MODULE": "off",
                "GOPATH": GO_PATH,
                "GOCACHE": str(tmp_path / "go-cache"),
                "GOFLAGS": "",
            },
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "checkpoint 1000 verified" in finished.stdout
    assert "record 999 included" in finished.stdout
    assert "tree 300 is a prefix of 1000" in finished.stdout
