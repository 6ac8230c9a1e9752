"""`make loadtest`: two gateway workers under 64 concurrent clients, then the books are checked.

The clients mix profile reads, batch reads, consent grants and withdrawals, self-service (`me`)
and auditor queries for LOADTEST_SECONDS (60). Afterwards:

- no answer was a 5xx;
- the member profiles the clients received equal the access events recorded for them (a profile
  is "received" when its object is non-null; an event counts when it is for `member`/`members`
  and not NOT_FOUND);
- `tillit audit seal` and `tillit audit verify` pass on the database.

It runs in a database of its own (`tillit_loadtest`, recreated each run) on DATABASE_URL's server,
or on the embedded PostgreSQL in bench/.pgdata. The test suite runs it for 15 s.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.seed import prepare_database, seed_members
from bench.serving import free_port, uvicorn_command
from gateway.access.auth import mint_member_token
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import db as gateway_db
from gateway.store import migrate
from gateway.store.embedded import start_embedded, with_database

HERE = Path(__file__).resolve().parent
MEMBER = (
    'query($id: ID!) { member(id: $id, purpose: "personalized_offers") '
    "{ id tier points incomeBand lifestyleSegment } }"
)
MEMBERS = (
    'query($ids: [ID!]!) { members(ids: $ids, purpose: "personalized_offers") '
    "{ id tier incomeBand } }"
)
GRANT = (
    'mutation($m: ID) { grantConsent(memberId: $m, purpose: "customer_insight", '
    'method: EXPLICIT, noticeVersion: "2026-01", channel: "loadtest", '
    'evidence: "Ja takk") { receiptId } }'
)
WITHDRAW = (
    'mutation($m: ID) { withdrawConsent(memberId: $m, purpose: "customer_insight") { withdrawn } }'
)
ME = (
    "{ me { id profile { tier } consents { purpose state } "
    "accessLog(first: 5) { edges { cursor } } } }"
)
ACCESS_LOG = "{ accessLog(first: 20) { edges { cursor node { operation outcome } } } }"
# The mix, by weight.
MIX = (
    ("member", 40),
    ("members", 15),
    ("consent", 15),
    ("me", 15),
    ("auditor", 10),
    ("purposes", 5),
)


async def fresh_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(gateway_db.asyncpg_dsn(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return gateway_db.normalize_url(with_database(admin_url, name))


@dataclass
class World:
    url: str
    app_key: str
    auditor_key: str
    member_ids: list[str]
    member_tokens: list[str]
    env: dict[str, str]


async def prepare(url: str, *, members: int = 2_000) -> World:
    secret = secrets.token_urlsafe(48)
    _, audit_key = Signer.generate()
    settings = Settings(dev=True)
    engine = gateway_db.create_engine(url, settings, pool_size=2)
    try:
        app, auditor = await prepare_database(engine, name="loadtest")
        await seed_members(engine, count=members)
        async with engine.connect() as connection:
            raw = await gateway_db.raw_of(connection)
            rows = await raw.fetch("SELECT id FROM members ORDER BY email")
    finally:
        await engine.dispose()
    ids = [str(row["id"]) for row in rows]
    tokens = [mint_member_token(uuid.UUID(i), secret, dt.timedelta(hours=1)) for i in ids[:200]]
    env = {
        **os.environ,
        "DATABASE_URL": migrate.as_gateway_login(url),
        "TILLIT_DEV": "false",
        "TILLIT_MEMBER_TOKEN_SECRET": secret,
        "TILLIT_AUDIT_SIGNING_KEY": audit_key,
        "TILLIT_LOG_FORMAT": "json",
        "TILLIT_LOG_LEVEL": "warning",
        "TILLIT_SEAL_INTERVAL_SECONDS": "1",
        # On, so that its cost is paid, but above what the one app client sends.
        "TILLIT_RATE_LIMIT_PER_SECOND": "100000",
        "TILLIT_RATE_LIMIT_BURST": "100000",
    }
    return World(url, app, auditor, ids, tokens, env)


class Gateway:
    """`uvicorn` with N workers and a sealer process, as `tillit serve --workers N` runs it."""

    def __init__(self, env: dict[str, str], *, workers: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        env = {**env, "TILLIT_SEALER": "standby"}
        self.sealer = subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "gateway", "sealer"],
            env=env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        self.process = subprocess.Popen(  # our own interpreter and arguments
            uvicorn_command(
                "gateway.app:create_app_from_environment",
                self.port,
                workers=workers,
                # As behind a load balancer: keep connections longer than the run lasts.
                extra=("--timeout-keep-alive", "300"),
            ),
            env=env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the gateway did not become ready; see {self.log.name}")

    def stop(self) -> None:
        for process in (self.process, self.sealer):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.log.close()


@dataclass
class Tally:
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    profiles_received: int = 0
    server_errors: list[str] = field(default_factory=list)


def _profiles(body: dict[str, Any]) -> int:
    data = body.get("data") or {}
    member = data.get("member")
    members = data.get("members") or []
    return (member is not None) + sum(1 for m in members if m is not None)


async def drive(world: World, base_url: str, *, seconds: float, clients: int) -> Tally:
    tally = Tally()
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(number)  # noqa: S311  (load, not secrets)
        app = {"Authorization": f"Bearer {world.app_key}"}
        while time.monotonic() < deadline:
            kind = rng.choice(kinds)
            headers = app
            if kind == "member":
                payload: dict[str, Any] = {
                    "query": MEMBER,
                    "variables": {"id": rng.choice(world.member_ids)},
                }
            elif kind == "members":
                payload = {
                    "query": MEMBERS,
                    "variables": {"ids": rng.sample(world.member_ids, 10)},
                }
            elif kind == "consent":
                document = rng.choice((GRANT, WITHDRAW))
                payload = {"query": document, "variables": {"m": rng.choice(world.member_ids)}}
            elif kind == "me":
                headers = {"Authorization": f"Bearer {rng.choice(world.member_tokens)}"}
                payload = {"query": ME}
            elif kind == "auditor":
                headers = {"Authorization": f"Bearer {world.auditor_key}"}
                payload = {"query": ACCESS_LOG}
            else:
                payload = {"query": "{ purposes { key } }"}
            try:
                sent = time.perf_counter()
                response = await http.post("/graphql", json=payload, headers=headers)
                tally.seconds[kind] += time.perf_counter() - sent
            except httpx.HTTPError as exc:
                tally.server_errors.append(f"{kind}: {type(exc).__name__}")
                continue
            tally.requests[kind] += 1
            tally.statuses[response.status_code] += 1
            if response.status_code >= 500:
                tally.server_errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            elif response.status_code == 200:
                tally.profiles_received += _profiles(response.json())

    async def one(number: int) -> None:
        # A client (and connection pool) per simulated client: one shared pool of 64 connections
        # spends its time in the pool's bookkeeping (measured: 142 vs 579 requests/s).
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            await client(number, http)

    await asyncio.gather(*(one(n) for n in range(clients)))
    return tally


async def audited_profiles(url: str) -> int:
    connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM access_events WHERE operation IN ('member', 'members') "
            "AND outcome <> 'NOT_FOUND'"
        )
    finally:
        await connection.close()
    return count


def tillit_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    tillit = Path(sys.executable).with_name("tillit")
    return subprocess.run(  # our own console script
        [str(tillit), *args], env=env, capture_output=True, text=True, check=False
    )


@dataclass
class Report:
    seconds: float
    tally: Tally
    audited: int
    verify: str
    verified: bool

    @property
    def ok(self) -> bool:
        return (
            not self.tally.server_errors
            and self.audited == self.tally.profiles_received
            and self.verified
        )

    def lines(self) -> list[str]:
        total = sum(self.tally.requests.values())
        return [
            f"{total} requests in {self.seconds:.0f} s ({total / self.seconds:.0f}/s): "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.tally.requests.items())),
            "mean latency: "
            + ", ".join(
                f"{k} {1000 * self.tally.seconds[k] / v:.0f} ms"
                for k, v in sorted(self.tally.requests.items())
            ),
            "statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.tally.statuses.items())),
            f"5xx or transport errors: {len(self.tally.server_errors)}",
            f"member profiles received {self.tally.profiles_received}, audited {self.audited}",
            f"audit verify: {self.verify}",
            "PASS" if self.ok else "FAIL",
        ]


def run(url: str, *, seconds: float, clients: int = 64, workers: int = 2) -> Report:
    world = asyncio.run(prepare(url))
    log = HERE / "results" / "loadtest.log"
    log.parent.mkdir(exist_ok=True)
    gateway = Gateway(world.env, workers=workers, log=log)
    try:
        began = time.monotonic()
        tally = asyncio.run(drive(world, gateway.url, seconds=seconds, clients=clients))
        elapsed = time.monotonic() - began
    finally:
        gateway.stop()
    audited = asyncio.run(audited_profiles(url))
    sealed = tillit_cli(world.env, "audit", "seal")
    verified = tillit_cli(world.env, "audit", "verify")
    verdict = (verified.stdout + verified.stderr).strip().splitlines()
    return Report(
        elapsed,
        tally,
        audited,
        verdict[-1] if verdict else sealed.stderr.strip(),
        sealed.returncode == 0 and verified.returncode == 0,
    )


def main() -> None:
    seconds = float(os.environ.get("LOADTEST_SECONDS", "60"))
    clients = int(os.environ.get("LOADTEST_CLIENTS", "64"))
    workers = int(os.environ.get("LOADTEST_WORKERS", "2"))
    admin = os.environ.get("DATABASE_URL") or start_embedded(HERE / ".pgdata")
    url = asyncio.run(fresh_database(admin, "tillit_loadtest"))
    print(f"load test: {workers} workers, {clients} clients, {seconds:.0f} s", flush=True)
    report = run(url, seconds=seconds, clients=clients, workers=workers)
    for line in report.lines():
        print(line)
    for error in report.tally.server_errors[:5]:
        print("  ", error)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
