"""Real GraphQL clients against a live gateway process: the GraphQL Foundation's
GraphQL-over-HTTP audit suite (npm `graphql-http`) and Apollo Client 4 (`@apollo/client`), run by
Node's test runner from `tests/clients/` (installed from its lock file by `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bench.loadtest import Gateway, fresh_database, prepare
from gateway.store.db import asyncpg_dsn

HERE = Path(__file__).resolve().parent
LOG = HERE.parent.parent / "bench" / "results" / "test-clients.log"


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI needs Node.js and `npm ci` in tests/clients (make test runs it)")
        pytest.skip("needs Node.js and `npm ci --prefix tests/clients` (make test runs it)")
    return node


@pytest.fixture
async def live(server_url: str) -> AsyncIterator[dict[str, str]]:
    name = f"tillit_clients_{uuid.uuid4().hex[:10]}"
    url = await fresh_database(server_url, name)
    world = await prepare(url, members=4)
    LOG.parent.mkdir(exist_ok=True)
    gateway = Gateway(world.env, workers=1, log=LOG)
    try:
        yield {
            "TILLIT_URL": gateway.url,
            "TILLIT_APP_KEY": world.app_key,
            # Seeded with a consent to personalized_offers and an income band.
            "TILLIT_MEMBER_ID": world.member_ids[1],
        }
    finally:
        gateway.stop()
        connection = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


@pytest.mark.parametrize("suite", ["audit.test.mjs", "apollo.test.mjs"])
def test_a_real_client_suite_passes(live: dict[str, str], suite: str) -> None:
    node = node_or_skip()

    finished = subprocess.run(  # noqa: S603  # our own interpreter of our own test files
        [node, "--test", "--test-reporter=spec", suite],
        cwd=HERE,
        env={**os.environ, **live},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    print(finished.stdout)  # the audit's counts per level, kept in the pytest log
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-2000:]
