"""The `tillit` command line, run as a user would, against the test database."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import authenticate, verify_member_token
from gateway.domain import ClientPrincipal
from gateway.store.db import raw_of
from gateway.store.migrate import head_revision
from tests.conftest import TEST_SECRET, add_member, row_counts, scalar, tillit


async def test_migrate_reports_the_head_revision(db: AsyncEngine, cli_env: object) -> None:
    result = await tillit("migrate")

    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output


async def test_migrate_down_and_up_on_an_empty_database(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, cli_env: object
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)

    up = await tillit("migrate")
    down = await tillit("migrate", "--down-to", "base")
    again = await tillit("migrate")

    assert f"revision {head_revision()}" in up.output
    assert "base (empty)" in down.output
    assert f"revision {head_revision()}" in again.output


async def test_policy_load_is_idempotent(db: AsyncEngine, cli_env: object) -> None:
    async with db.begin() as connection:
        await connection.execute(text("TRUNCATE purposes CASCADE"))

    first = await tillit("policy", "load")
    second = await tillit("policy", "load")

    assert first.exit_code == 0, first.output
    assert (
        "created: membership_service, personalized_offers, email_marketing, customer_insight, "
        "data_quality" in first.output
    )
    assert "unchanged:" in second.output
    assert "created" not in second.output
    assert await scalar(db, "SELECT count(*) FROM purposes") == 5


async def test_policy_check_refuses_an_invalid_file_with_its_line(
    tmp_path: Path, cli_env: object
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n\n[purposes.x]\nlegal_basis = "MAGIC"\n', encoding="utf-8")

    result = await tillit("policy", "load", str(bad), "--check")

    assert result.exit_code == 1
    assert f"{bad}:4" in result.output
    assert "legal_basis" in result.output


async def test_clients_create_prints_a_working_key_once(db: AsyncEngine, cli_env: object) -> None:
    result = await tillit(
        "clients",
        "create",
        "--name",
        "web shop",
        "--role",
        "app",
        "--purpose",
        "membership_service",
        "--purpose",
        "personalized_offers",
        "--capability",
        "capture_consent",
    )

    assert result.exit_code == 0, result.output
    keys = [line.split()[1] for line in result.output.splitlines() if "key:" in line]
    assert len(keys) == 1
    async with db.connect() as connection:
        principal = await authenticate(
            await raw_of(connection), f"Bearer {keys[0]}", token_secret="unused"
        )
    assert isinstance(principal, ClientPrincipal)
    assert principal.name == "web shop"
    assert principal.purposes == {"membership_service", "personalized_offers"}
    stored = await scalar(db, "SELECT string_agg(key_hash || key_id, '') FROM clients")
    assert keys[0] not in str(stored)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purpose", "telemarketing"], "Unknown purpose(s): telemarketing"),
        (["--role", "root"], "Invalid value for '--role'"),
        (["--role", "auditor", "--purpose", "membership_service"], "Only app clients"),
    ],
)
async def test_clients_create_refuses_bad_input(
    db: AsyncEngine, cli_env: object, args: list[str], message: str
) -> None:
    result = await tillit("clients", "create", "--name", "x", *args)

    assert result.exit_code != 0
    assert message in result.output
    assert await scalar(db, "SELECT count(*) FROM clients") == 0


async def test_clients_create_refuses_a_duplicate_name(db: AsyncEngine, cli_env: object) -> None:
    await tillit("clients", "create", "--name", "shop")

    again = await tillit("clients", "create", "--name", "shop")

    assert again.exit_code == 1
    assert "exists already" in again.output
    assert await scalar(db, "SELECT count(*) FROM clients") == 1


async def test_token_mints_a_verifiable_member_token(db: AsyncEngine, cli_env: object) -> None:
    member_id = await add_member(db)

    result = await tillit("token", str(member_id), "--ttl", "120")

    assert result.exit_code == 0, result.output
    assert verify_member_token(result.output.strip(), TEST_SECRET).member_id == member_id


@pytest.mark.parametrize(
    ("member", "message"), [(str(uuid.uuid4()), "no member has this id"), ("7", "is a UUID")]
)
async def test_token_refuses_an_unknown_or_malformed_member(
    db: AsyncEngine, cli_env: object, member: str, message: str
) -> None:
    result = await tillit("token", member)

    assert result.exit_code == 1
    assert message in result.output


async def test_demo_is_reproducible_and_idempotent(db: AsyncEngine, cli_env: object) -> None:
    first = await tillit("demo", "--members", "30", "--seed", "7")
    counts = await row_counts(db)
    second = await tillit("demo", "--members", "30", "--seed", "7")

    assert first.exit_code == 0, first.output
    assert "30 members (30 new)" in first.output
    assert "30 members (0 new)" in second.output
    assert await row_counts(db) == counts
    assert counts["members"] == 30
    assert counts["clients"] == 2
    explicit = await scalar(db, "SELECT count(*) FROM consent_events WHERE method = 'EXPLICIT'")
    conditional = await scalar(
        db, "SELECT count(*) FROM consent_events WHERE method = 'CONDITIONAL'"
    )
    assert isinstance(explicit, int)
    assert isinstance(conditional, int)
    assert explicit > 0
    assert conditional > 0
    assert counts["enrichment_records"] > 0
    assert counts["cleansing_records"] > 0
    token = first.output.strip().splitlines()[-1]
    member_id = verify_member_token(token, TEST_SECRET).member_id
    assert await scalar(db, f"SELECT count(*) FROM members WHERE id = '{member_id}'") == 1


async def test_outside_dev_mode_a_missing_secret_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, cli_env: object
) -> None:
    monkeypatch.delenv("TILLIT_MEMBER_TOKEN_SECRET")

    result = await tillit("serve")

    assert result.exit_code == 2
    assert "TILLIT_MEMBER_TOKEN_SECRET" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_answers_and_stops_cleanly_on_interrupt(
    db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    port = _free_port()
    env = {**os.environ, **cli_env, "TILLIT_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        health = ready = None
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while time.monotonic() < deadline:
                try:
                    health = await client.get("/healthz")
                    ready = await client.get("/readyz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        assert health is not None
        assert health.status_code == 200
        assert ready is not None
        assert ready.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output


async def test_serve_closes_a_connection_whose_headers_are_too_slow(
    db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    """In every worker: the setting reaches the processes uvicorn starts."""
    port = _free_port()
    env = {**os.environ, **cli_env, "TILLIT_PORT": str(port), "TILLIT_HEADER_TIMEOUT_SECONDS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--workers",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            while time.monotonic() < deadline:
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
        # Several connections, so that both workers get some.
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        for _, writer in connections:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: tillit.test\r\nX-Slow: ")
        async with asyncio.timeout(5):
            for reader, writer in connections:
                assert await reader.read() == b""
                writer.close()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output
