"""`make bench`: Tillit beside the reference servers, on one database, in one run.

Seeds a benchmark database (100,000 members, half consenting to personalized_offers; 1,000,000
access events for the export), then for each scenario serves and loads the servers in turn
(A B C A B C ...), with production settings: one worker, no GraphiQL, JSON logs to a file. The load
generator is wrk with a Lua script, concurrency 16. Prints medians and ratios; writes
bench/results/<time>.json.

S5 (bench.audience) exports the email_marketing audience of 1,000,000 members (half consenting)
through /audiences/export beside psql \\copy of the same consent-filtered rows, in a database of
its own on the same server (tillit_bench_audience), seeded once; it needs no wrk.

Environment: DATABASE_URL (default: the embedded PostgreSQL in bench/.pgdata), BENCH_ROUNDS (3),
BENCH_SECONDS (6), BENCH_SCENARIOS (S1,S2,S3,S4,H2,A1,S5), BENCH_EVENTS (1000000),
BENCH_HOLD_SECONDS (120: how long H2 holds S2 with the sealer running as in production),
BENCH_AUDIENCE_MEMBERS (1000000: S5's members; another size gets a database of its own),
BENCH_SHARED_BUFFERS (2GB: the embedded database's buffers; a DATABASE_URL server keeps its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy import text

from bench import audience, peer
from bench.anonymous import anonymous_scenario
from bench.hostile import refusal_cost
from bench.seed import prepare_database, seed_events, seed_members
from bench.serving import RssSampler, cpu_delta, free_port, postgres_cpu, uvicorn_command
from gateway.audit.sealer import seal_until_current
from gateway.audit.sealing import EVENT_COLUMNS
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import db as gateway_db
from gateway.store import migrate
from gateway.store.embedded import ensure_database, start_embedded, with_database

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = 16
# Tillit without its audit trail's writes (bench.servers): a reference, never a way to serve.
UNAUDITED = "tillit-unaudited"
SERVERS = {
    "tillit": "gateway.app:create_app_from_environment",
    "raw": "bench.servers:raw_factory",
    "bare": "bench.servers:bare_factory",
    UNAUDITED: "bench.servers:unaudited_factory",
}


# The embedded database's buffers: PostgreSQL's default (128MB) is sized to start anywhere, not to
# serve; its documentation suggests a quarter of the memory of a dedicated server. This machine
# also runs the servers and the load, and its kernel keeps the page cache at about 450 MB of 24 GB
# (it reclaims cold pages: kdamond), so with 128MB the scenarios read the 1.3 GB benchmark
# database from the disk (vmstat: 100-2,000 blocks read a second during S3 after S2), which
# measures the disk and its neighbours rather than the servers. 2GB holds what the timed
# scenarios use.
EMBEDDED_PARAMETERS = {"shared_buffers": os.environ.get("BENCH_SHARED_BUFFERS", "2GB")}


class Server:
    """One server process: uvicorn with one worker and production settings (or the peer's Node
    process), logs to a file."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        log = (RESULTS / f"{name}.log").open("ab")
        if name == UNAUDITED:
            env = {**env, "TILLIT_SEAL_INTERVAL_SECONDS": "0"}  # it writes nothing to seal
        if name in peer.SCRIPTS:
            arguments = peer.command()
            # Production mode: graphql-js and PostGraphile skip their development checks.
            env = {**env, "PEER_PORT": str(self.port), "NODE_ENV": "production"}
        else:
            arguments = uvicorn_command(SERVERS[name], self.port)
        self.sealer: subprocess.Popen[bytes] | None = None
        if name == "tillit":
            # As `tillit serve` runs it: a sealer process of its own, the worker on standby.
            env = {**env, "TILLIT_SEALER": "standby"}
            self.sealer = subprocess.Popen(  # our own interpreter and module
                [sys.executable, "-m", "gateway", "sealer"], env=env, stdout=log, stderr=log
            )
        self.process = subprocess.Popen(  # our own interpreter, or node, and our arguments
            arguments,
            env=env,
            stdout=log,
            stderr=log,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/graphql", json={"query": "{ __typename }"}, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start; see {RESULTS / (name + '.log')}")

    def stop(self) -> None:
        for process in (self.process, self.sealer):
            if process is not None:
                process.terminate()
                process.wait(timeout=20)

    def cpu_seconds(self) -> float:
        """CPU used so far by the server process and its children (uvicorn's worker), and by
        Tillit's sealer process."""
        total = 0.0
        for pid in (self.process.pid, self.sealer.pid if self.sealer else None):
            if pid is None:
                continue
            process = psutil.Process(pid)
            total += sum(process.cpu_times()[:2])
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += sum(child.cpu_times()[:2])
        return total


def wrk(url: str, script: str, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    output = subprocess.run(  # wrk from Debian's packages
        [
            "wrk",
            "-t2",
            f"-c{CONCURRENCY}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "wrk" / script),
            url,
        ],
        env={**os.environ, **env, "BENCH_DIR": str(HERE / "wrk")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    summary: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


async def prepare(url: str, events: int) -> dict[str, str]:
    """Migrate, load the policy, seed, and make the benchmark's clients; returns their keys."""
    settings = Settings(dev=True, db_statement_timeout_ms=900_000)
    engine = gateway_db.create_engine(url, settings, pool_size=2)
    try:
        app, auditor = await prepare_database(engine, name="bench")
        await seed_members(engine, count=100_000)
        await seed_events(engine, count=events, signer=SIGNER)
        async with engine.connect() as connection:
            # Fresh statistics, so every server's plans are the ones a settled database gets
            # (autovacuum may not have analysed freshly seeded tables yet: seen as a 100-id read
            # planned as a scan).
            await connection.execute(text("ANALYZE"))
            await connection.commit()
            app_id = str(
                await connection.scalar(text("SELECT id FROM clients WHERE name = 'bench-app'"))
            )
    finally:
        await engine.dispose()
    await peer.prepare(url)
    jwt = peer.token(PEER_SECRET, app_id)
    # The plain view answers anyone (no token, so PostGraphile opens no transaction for it);
    # the audited function needs to know the client.
    return {"app": app, "auditor": auditor, "peer-view": "", "peer-audited": jwt}


def _ask(url: str, statement: str) -> Any:
    """One statement on a connection of its own (outside the timed runs): its first value."""

    async def run() -> Any:
        connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
        try:
            return await connection.fetchval(statement)
        finally:
            await connection.close()

    return asyncio.run(run())


def _bench_key() -> tuple[Signer, str]:
    """One signing key for the benchmark database, kept beside the results (not in git)."""
    path = RESULTS / ".audit-signing-key"
    if path.exists():
        seed = path.read_text(encoding="utf-8").strip()
        return Signer.from_base64(seed), seed
    RESULTS.mkdir(exist_ok=True)
    signer, seed = Signer.generate()
    path.write_text(seed + "\n", encoding="utf-8")
    return signer, seed


SIGNER, SIGNING_KEY = _bench_key()
PEER_SECRET = secrets.token_urlsafe(48)


def server_env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": migrate.as_gateway_login(url),
        "TILLIT_DEV": "false",
        "TILLIT_MEMBER_TOKEN_SECRET": secrets.token_urlsafe(48),
        "TILLIT_AUDIT_SIGNING_KEY": SIGNING_KEY,
        "TILLIT_LOG_FORMAT": "json",
        "TILLIT_LOG_LEVEL": "info",
        "TILLIT_WORKERS": "1",
        # Rate limiting stays on, so its cost is measured, with a limit the one client never hits.
        "TILLIT_RATE_LIMIT_PER_SECOND": "100000",
        "TILLIT_RATE_LIMIT_BURST": "100000",
        "PEER_DATABASE_URL": peer.node_url(url),
        "PEER_JWT_SECRET": PEER_SECRET,
    }


def write_ids(url: str, path: Path) -> None:
    async def fetch() -> list[str]:
        connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
        try:
            rows = await connection.fetch(
                "SELECT id::text FROM members WHERE email LIKE 'bench%' ORDER BY email"
            )
        finally:
            await connection.close()
        return [row[0] for row in rows]

    path.write_text("\n".join(asyncio.run(fetch())) + "\n", encoding="utf-8")


def load_scenario(
    name: str,
    script: str,
    servers: list[str],
    *,
    url: str,
    keys: dict[str, str],
    ids: Path,
    rounds: int,
    seconds: int,
) -> dict[str, list[dict[str, Any]]]:
    """Each server in turn, round after round; per run req/s, latency, and CPU per request of
    the server and of PostgreSQL."""
    runs: dict[str, list[dict[str, Any]]] = {server: [] for server in servers}
    # A scenario starts from a settled database (see settle). Then Tillit runs it once untimed,
    # so that every timed round inherits one round of its own scenario's events to seal, as
    # rounds 2 and 3 always did (round 1 inherited another scenario's: after S2, a hundred events
    # a request, some 110,000): a server under steady load seals what it wrote a moment ago
    # while it writes more.
    settle(url, name)
    if "tillit" in servers:
        result = _load_round("tillit", script, url=url, keys=keys, ids=ids, seconds=seconds)
        print(f"  {name} untimed tillit round: {result['rps']:.0f} req/s", flush=True)
    for round_ in range(rounds):
        for server_name in servers:
            result = _load_round(server_name, script, url=url, keys=keys, ids=ids, seconds=seconds)
            if server_name == "peer-audited":
                seal(url)  # its access events, outside the timed runs
            runs[server_name].append(result)
            print(
                f"  {name} round {round_ + 1} {server_name}: {result['rps']:.0f} req/s "
                f"p50 {result['p50_us'] / 1000:.1f} ms p99 {result['p99_us'] / 1000:.1f} ms "
                f"CPU/req {result['cpu_server_ms']:.2f} + {result['cpu_pg_ms']:.2f} ms "
                f"errors {result['socket_errors'] + result['status_errors']}",
                flush=True,
            )
    return runs


# Runs that are a server under another scenario's load, alternated with a scenario's own: S3's
# target is a ratio to S1, and this machine's speed drifts by half within minutes (S3 alone
# measured 790 req/s at 1.24 ms of server CPU a request, and 426-477 at 2.0-2.2 ms twenty minutes
# later, same code and database), so S3 is compared with S1 rounds run between its own.
PAIRED = {"tillit-S1": ("tillit", "member.lua")}


def _load_round(
    name: str, script: str, *, url: str, keys: dict[str, str], ids: Path, seconds: int
) -> dict[str, Any]:
    """One server started, warmed up and loaded for `seconds`: wrk's figures, with CPU per
    request of the server (Tillit's sealer process included) and of PostgreSQL."""
    server_name, script = PAIRED.get(name, (name, script))
    server = Server(server_name, server_env(url))
    load = peer.SCRIPTS.get(server_name, script)
    env = {"BENCH_IDS": str(ids), "BENCH_KEY": keys.get(server_name, keys["app"])}
    try:
        # A short warm-up, so caches and pools are filled as in steady state.
        wrk(server.url, load, WARMUP_SECONDS, env)
        check_answers(server, load, env)
        cpu, pg = server.cpu_seconds(), postgres_cpu()
        result = wrk(server.url, load, seconds, env)
        result["cpu_server_ms"] = (server.cpu_seconds() - cpu) / result["requests"] * 1e3
        result["cpu_pg_ms"] = cpu_delta(pg, postgres_cpu()) / result["requests"] * 1e3
    finally:
        server.stop()
    return result


def check_answers(server: Server, script: str, env: dict[str, str]) -> None:
    """One request as the script sends it must come back with data (a server that answered
    every request with an error would look fast). Field errors beside data are answers: the
    enriched fields of members without consent are withheld with CONSENT_REQUIRED."""
    body = subprocess.run(  # lua is not needed: ask wrk's script for one body through a dry run
        ["wrk", "-t1", "-c1", "-d1s", "-s", str(HERE / "wrk" / script), server.url],
        env={**os.environ, **env, "BENCH_DIR": str(HERE / "wrk"), "BENCH_ECHO": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    answers = [line for line in body.splitlines() if line.startswith(('{"data"', '{"errors"'))]
    answer = json.loads(answers[0]) if answers else {}
    data = answer.get("data") or {}
    if not data or any(value is None for value in data.values()):
        raise RuntimeError(f"{server.name} answers {script} with {body[:300]}")


def settle(url: str, name: str) -> None:
    """Before a scenario, outside its timed runs: seal what earlier ones left unsealed, then
    checkpoint the database, so that the scenario neither seals nor flushes another's writes."""
    began = time.perf_counter()
    left = seal(url)
    _ask(url, "CHECKPOINT")
    print(
        f"  {name}: sealed {left} events left unsealed and checkpointed "
        f"({time.perf_counter() - began:.1f} s)",
        flush=True,
    )


def seal(url: str) -> int:
    """Seal every final event (outside any timed run); returns how many were sealed."""

    async def run() -> int:
        engine = gateway_db.create_engine(url, Settings(dev=True), pool_size=1)
        try:
            checkpoints = await seal_until_current(engine, SIGNER)
        finally:
            await engine.dispose()
        return sum(checkpoint.event_count for checkpoint in checkpoints)

    return asyncio.run(run())


HOLD_SAMPLE_SECONDS = 5.0
# Before a timed run: pools, plans and the database's cache as in steady state. This machine
# evicts cold pages from the page cache (a run after S4's full read of the log found its first
# 100-id reads timing out for 20 s on disk reads, then ran at half speed while the database
# checkpointed).
WARMUP_SECONDS = 3
HOLD_WARMUP_SECONDS = 15
SEAL_INTERVAL_SECONDS = Settings.model_fields["seal_interval_seconds"].default


def hold_scenario(url: str, keys: dict[str, str], ids: Path, seconds: int) -> dict[str, Any]:
    """S2 held for `seconds` with the sealer as production runs it (in the gateway, every
    TILLIT_SEAL_INTERVAL_SECONDS): the unsealed backlog every few seconds. The target: it stays
    under two sealing intervals' worth of the events written."""
    seal(url)
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sample() -> None:
        async def run() -> None:
            connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
            began = time.monotonic()
            try:
                while not stop.is_set():
                    row = await connection.fetchrow(_BACKLOG)
                    samples.append(
                        {
                            "t": time.monotonic() - began,
                            "unsealed": int(row["unsealed"]),
                            "sealed": int(row["sealed"]),
                        }
                    )
                    await asyncio.sleep(HOLD_SAMPLE_SECONDS)
            finally:
                await connection.close()

        asyncio.run(run())

    server = Server("tillit", server_env(url))
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        load = {"BENCH_IDS": str(ids), "BENCH_KEY": keys["app"]}
        wrk(server.url, "members.lua", HOLD_WARMUP_SECONDS, load)
        sampler.start()
        result = wrk(server.url, "members.lua", seconds, load)
    finally:
        stop.set()
        sampler.join()
        server.stop()
    written_per_s = result["requests"] * 100 / (result["duration_us"] / 1e6)
    limit = 2 * SEAL_INTERVAL_SECONDS * written_per_s
    peak = max(s["unsealed"] for s in samples)
    for item in samples:
        print(f"  hold t={item['t']:.0f} s unsealed {item['unsealed']}", flush=True)
    sealed = [s["sealed"] for s in samples]
    seal_rate = (sealed[-1] - sealed[0]) / (samples[-1]["t"] - samples[0]["t"] or 1)
    seal(url)
    return {
        "seconds": seconds,
        "rps": result["rps"],
        "events_written_per_s": written_per_s,
        "events_sealed_per_s": seal_rate,
        "seal_interval_s": SEAL_INTERVAL_SECONDS,
        "backlog_limit": limit,
        "backlog_peak": peak,
        "backlog_end": samples[-1]["unsealed"],
        "within_target": peak < limit,
        "samples": samples,
    }


_BACKLOG = """
SELECT (SELECT count(*) FROM access_events
        WHERE txid >= (SELECT horizon FROM audit_checkpoints ORDER BY id DESC LIMIT 1)) AS unsealed,
       (SELECT last_position FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS sealed
"""


def export_scenario(url: str, keys: dict[str, str], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """S4: the whole log as CSV through /audit/export, against psql \\copy of the same rows."""
    runs: dict[str, list[dict[str, Any]]] = {"tillit": [], "psql": []}
    seal(url)  # what S3 left unsealed, outside the timed runs (see load_scenario)
    start, end = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    plain = gateway_db.asyncpg_dsn(url)
    # The same rows and columns as the export (position, the event, its hash), in PostgreSQL's
    # own text forms: what an auditor with database access would copy out instead.
    columns = ", ".join(f"e.{column}" for column in EVENT_COLUMNS)
    copy = (
        f"\\copy (SELECT s.position, {columns}, s.event_hash FROM audit_seals s "  # noqa: S608  # constant columns
        "JOIN access_events e ON e.id = s.event_id ORDER BY s.position) TO STDOUT WITH CSV HEADER"
    )
    # Once before the rounds, so that neither side reads the log from disk and the other from
    # the cache (Tillit goes first in each round).
    subprocess.run(["psql", plain, "-q", "-o", "/dev/null", "-c", copy], check=True)
    for round_ in range(rounds):
        server = Server("tillit", server_env(url))
        sampler = RssSampler(server.process.pid)
        sampler.start()
        began = time.perf_counter()
        rows = 0
        try:
            with httpx.stream(
                "GET",
                f"{server.url}/audit/export",
                params={"from": start, "to": end},
                headers={"Authorization": f"Bearer {keys['auditor']}"},
                timeout=600,
            ) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    rows += chunk.count(b"\n")
        finally:
            elapsed = time.perf_counter() - began
            sampler.stop()
            server.stop()
        runs["tillit"].append(
            {
                "rows": rows - 1,
                "seconds": elapsed,
                "rows_per_s": (rows - 1) / elapsed,
                "peak_rss_mb": sampler.peak / 2**20,
            }
        )
        began = time.perf_counter()
        result = subprocess.run(
            ["psql", plain, "-q", "-c", copy],
            capture_output=True,
            check=True,
        )
        elapsed = time.perf_counter() - began
        copied = result.stdout.count(b"\n") - 1
        runs["psql"].append({"rows": copied, "seconds": elapsed, "rows_per_s": copied / elapsed})
        print(
            f"  S4 round {round_ + 1}: tillit {runs['tillit'][-1]['rows_per_s']:.0f} rows/s "
            f"(peak RSS {runs['tillit'][-1]['peak_rss_mb']:.0f} MB), psql "
            f"{runs['psql'][-1]['rows_per_s']:.0f} rows/s",
            flush=True,
        )
    return runs


def run_anonymous(url: str, keys: dict[str, str], ids: Path, seconds: int) -> dict[str, Any]:
    """A1 (bench.anonymous) on a log of at least a few thousand sealed events."""
    size = int(_ask(url, "SELECT coalesce(max(last_position), 0) FROM audit_checkpoints") or 0)
    if size < 4096:  # a benchmark run of A1 alone: make a log to ask about
        _load_round("tillit", "member.lua", url=url, keys=keys, ids=ids, seconds=3)
    seal(url)
    size = int(_ask(url, "SELECT max(last_position) FROM audit_checkpoints WHERE note IS NOT NULL"))

    def start(extra: dict[str, str]) -> Server:
        return Server("tillit", {**server_env(url), **extra})

    member_env = {"BENCH_IDS": str(ids), "BENCH_KEY": keys["app"]}
    return anonymous_scenario(
        start, url=url, tree_size=size, member_env=member_env, wrk_dir=HERE / "wrk", seconds=seconds
    )


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    seconds = int(os.environ.get("BENCH_SECONDS", "6"))
    scenarios = os.environ.get("BENCH_SCENARIOS", "S1,S2,S3,S4,H2,A1,S5").split(",")
    events = int(os.environ.get("BENCH_EVENTS", "1000000"))
    url = os.environ.get("DATABASE_URL")
    if url is None:
        admin = start_embedded(HERE / ".pgdata", parameters=EMBEDDED_PARAMETERS)
        asyncio.run(ensure_database(admin, "tillit_bench"))
        url = with_database(admin, "tillit_bench")
    url = gateway_db.normalize_url(url)
    print(
        f"preparing the benchmark database ({os.cpu_count()} cores, shared_buffers "
        f"{_ask(url, 'SHOW shared_buffers')})",
        flush=True,
    )
    began = time.perf_counter()
    keys = asyncio.run(prepare(url, events if "S4" in scenarios else 0))
    print(f"  ready in {time.perf_counter() - began:.0f} s", flush=True)
    if "S5" in scenarios:
        members = int(os.environ.get("BENCH_AUDIENCE_MEMBERS", str(audience.DEFAULT_MEMBERS)))
        audience_url, audience_key, spent, seeded = asyncio.run(
            audience.prepare(url, members, name="bench")
        )
        print(
            f"  S5: {'seeded' if seeded else 'reused'} {members} members in "
            f"{audience.database_name(members)} ({spent:.0f} s)",
            flush=True,
        )
    ids = RESULTS / ".member-ids.txt"
    write_ids(url, ids)
    common: dict[str, Any] = {
        "url": url,
        "keys": keys,
        "ids": ids,
        "rounds": rounds,
        "seconds": seconds,
    }
    results: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "seconds": seconds,
    }
    if "S1" in scenarios:
        peer.install()
        results["S1"] = load_scenario(
            "S1",
            "member.lua",
            ["tillit", "raw", "bare", "peer-view", "peer-audited", UNAUDITED],
            **common,
        )
    if "S2" in scenarios:
        results["S2"] = load_scenario(
            "S2", "members.lua", ["tillit", "raw", "bare", UNAUDITED], **common
        )
    if "S3" in scenarios:
        results["S3"] = load_scenario("S3", "consent.lua", ["tillit", "tillit-S1"], **common)
    if "S4" in scenarios:
        results["S4"] = export_scenario(url, keys, rounds)
    if "H2" in scenarios:
        hold = int(os.environ.get("BENCH_HOLD_SECONDS", "120"))
        results["H2"] = hold_scenario(url, keys, ids, hold)
    if "A1" in scenarios:
        results["A1"] = run_anonymous(url, keys, ids, seconds)
    if "S5" in scenarios:
        # After S4 (and in a database of its own): its exports' access events are not S4's log.
        results["S5"] = audience.audience_scenario(
            lambda: Server("tillit", server_env(audience_url)),
            lambda: seal(audience_url),
            url=audience_url,
            key=audience_key,
            rounds=rounds,
        )
        results["S5"]["prepare_seconds"] = spent
        results["S5"]["seeded"] = seeded
    results["R1"] = [refusal_cost(fragments=n) for n in (20, 40)]
    summary = summarise(results)
    results["summary"] = summary
    out = RESULTS / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(summary))
    print(f"results: {out}")


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"cores": results["cores"]}
    for scenario in ("S1", "S2", "S3"):
        if scenario in results:
            summary[scenario] = {
                server: {
                    "rps": median(runs, "rps"),
                    "p50_ms": median(runs, "p50_us") / 1000,
                    "p99_ms": median(runs, "p99_us") / 1000,
                    "cpu_server_ms": median(runs, "cpu_server_ms"),
                    "cpu_pg_ms": median(runs, "cpu_pg_ms"),
                }
                for server, runs in results[scenario].items()
            }
    s1 = summary.get("S1")
    if s1:
        summary["S1"]["tillit/bare"] = s1["tillit"]["rps"] / s1["bare"]["rps"]
        summary["S1"]["tillit/raw"] = s1["tillit"]["rps"] / s1["raw"]["rps"]
        for name in (*peer.SCRIPTS, UNAUDITED):
            if name in s1:
                summary["S1"][f"tillit/{name}"] = s1["tillit"]["rps"] / s1[name]["rps"]
    if "S2" in summary:
        s2 = summary["S2"]
        for server in ("tillit", "raw", "bare", UNAUDITED):
            if server in s2:
                s2[server]["members_per_s"] = s2[server]["rps"] * 100
        s2["tillit/raw"] = s2["tillit"]["rps"] / s2["raw"]["rps"]
        s2["tillit/bare"] = s2["tillit"]["rps"] / s2["bare"]["rps"]
        if UNAUDITED in s2:
            s2[f"tillit/{UNAUDITED}"] = s2["tillit"]["rps"] / s2[UNAUDITED]["rps"]
            s2[f"{UNAUDITED}/raw"] = s2[UNAUDITED]["rps"] / s2["raw"]["rps"]
        if s1:
            s2["members_per_s/S1_rps"] = s2["tillit"]["members_per_s"] / s1["tillit"]["rps"]
    if "S3" in summary:
        # S1 as measured between S3's rounds (older results have none: S1's own rounds).
        paired = summary["S3"].get("tillit-S1") or (s1 or {}).get("tillit")
        if paired:
            summary["S3"]["tillit/S1"] = summary["S3"]["tillit"]["rps"] / paired["rps"]
    if "S4" in results:
        tillit, psql = results["S4"]["tillit"], results["S4"]["psql"]
        summary["S4"] = {
            "tillit_rows_per_s": median(tillit, "rows_per_s"),
            "psql_rows_per_s": median(psql, "rows_per_s"),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in tillit),
            "rows": tillit[0]["rows"],
        }
        summary["S4"]["tillit/psql"] = (
            summary["S4"]["tillit_rows_per_s"] / summary["S4"]["psql_rows_per_s"]
        )
    if "S5" in results:
        summary["S5"] = audience.summarise(results["S5"])
    summary["R1"] = results.get("R1", [])
    if "A1" in results:
        a1 = results["A1"]
        reads = a1["member_reads"]
        summary["A1"] = {
            "worst_kind": a1["worst"]["kind"],
            "worst_cpu_ms": a1["worst"]["cpu_ms"],
            "within_target": a1["worst"]["cpu_ms"] <= 2.0,
            "member_p50_ms": reads["alone"]["p50_us"] / 1000,
            "member_p50_beside_ms": reads["with_anonymous"]["p50_us"] / 1000,
            "member_p99_ms": reads["alone"]["p99_us"] / 1000,
            "member_p99_beside_ms": reads["with_anonymous"]["p99_us"] / 1000,
            "p50_ratio": reads["p50_ratio"],
            "anonymous_refused_share": reads["refused_share"],
        }
    if "H2" in results:
        summary["H2"] = {k: v for k, v in results["H2"].items() if k != "samples"}
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"\nmedians, {summary['cores']} cores, concurrency {CONCURRENCY}\n",
        "| scenario | server | req/s | p50 / p99 ms | CPU per request: server + PostgreSQL |",
        "|---|---|---|---|---|",
    ]
    for scenario in ("S1", "S2", "S3"):
        for server, row in summary.get(scenario, {}).items():
            if "/" in server or not isinstance(row, dict):
                continue
            lines.append(
                f"| {scenario} | {server} | {row['rps']:.0f} | {row['p50_ms']:.1f} / "
                f"{row['p99_ms']:.1f} | {row['cpu_server_ms']:.2f} + {row['cpu_pg_ms']:.2f} ms |"
            )
    lines += ["", "| scenario | tillit | raw | bare | ratios |", "|---|---|---|---|---|"]
    for scenario, label in (("S1", "req/s"), ("S2", "req/s"), ("S3", "req/s")):
        if scenario not in summary:
            continue
        row = summary[scenario]
        cells = [
            f"{row[s]['rps']:.0f} {label} "
            f"(p50 {row[s]['p50_ms']:.1f} / p99 {row[s]['p99_ms']:.1f} ms)"
            if s in row
            else ""
            for s in ("tillit", "raw", "bare")
        ]
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if "/" in k)
        lines.append(f"| {scenario} | {' | '.join(cells)} | {ratios} |")
    if "S4" in summary:
        s4 = summary["S4"]
        lines.append(
            f"| S4 export {s4['rows']} rows | {s4['tillit_rows_per_s']:.0f} rows/s, peak RSS "
            f"{s4['peak_rss_mb']:.0f} MB | psql {s4['psql_rows_per_s']:.0f} rows/s | | "
            f"tillit/psql {s4['tillit/psql']:.2f} |"
        )
    if "S5" in summary:
        lines.append(audience.table_row(summary["S5"]))
    if "H2" in summary:
        h2 = summary["H2"]
        lines.append(
            f"| H2 S2 held {h2['seconds']} s, sealer every {h2['seal_interval_s']:g} s | "
            f"{h2['rps']:.0f} req/s, {h2['events_written_per_s']:.0f} events/s written, "
            f"{h2['events_sealed_per_s']:.0f} sealed | unsealed peak {h2['backlog_peak']}, end "
            f"{h2['backlog_end']} | limit {h2['backlog_limit']:.0f} (two intervals) | "
            f"{'within' if h2['within_target'] else 'OVER'} |"
        )
    for refusal in summary.get("R1", ()):
        lines.append(
            f"| R1 refusing a {refusal['fragments']}-fragment doubling document "
            f"({refusal['bytes']} bytes, a new operation name each) | median "
            f"{refusal['median_ms']:.2f} ms, max {refusal['max_ms']:.2f} ms | | | |"
        )
    if "A1" in summary:
        a1 = summary["A1"]
        lines.append(
            f"| A1 worst anonymous request ({a1['worst_kind']}) | {a1['worst_cpu_ms']:.2f} ms of "
            f"CPU (server + PostgreSQL) | target 2 ms | | "
            f"{'within' if a1['within_target'] else 'OVER'} |"
        )
        lines.append(
            f"| A1 member reads beside 8 anonymous proof clients | p50 "
            f"{a1['member_p50_beside_ms']:.1f} ms (alone {a1['member_p50_ms']:.1f}), p99 "
            f"{a1['member_p99_beside_ms']:.1f} ms (alone {a1['member_p99_ms']:.1f}) | "
            f"{a1['anonymous_refused_share']:.0%} of anonymous refused 429 | | "
            f"p50 ratio {a1['p50_ratio']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
