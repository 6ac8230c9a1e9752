"""S5: the email_marketing audience exported through the gateway, beside `psql \\copy`.

A database of its own (so that S4, which exports the whole access log of the benchmark database,
and S1-S3, which read its 100,000 members, are not changed by it): BENCH_AUDIENCE_MEMBERS members
(1,000,000), half of whom hold a valid EXPLICIT email_marketing consent on notice 2026-01, the
others withdrawn, expired, conditional, on an older notice, consenting to another purpose, or
never asked (bench.seed.seed_audience). Seeded once with set-based statements, reused afterwards.

Each round, A B: Tillit (a fresh server as S4 starts it, with its sealer) streams
`GET /audiences/export?purpose=email_marketing&format=csv` to nowhere while its server process's
resident memory is sampled; rows come from the export's signed manifest (and must equal the CSV's
lines less the header), and the access events the export wrote are counted (one per member
exported: the target). Then psql copies the same columns of the same members, selected by the
same consent rule, with no audit, to /dev/null. Per side: rows/s, and CPU per 1,000 members of
Tillit's server process (its sealer process counted apart) and of PostgreSQL (this cluster's
processes, ended backends included; on Tillit's side with the sealer's statements while the export
ran). After Tillit's side, untimed: what the sealer had not yet sealed of the export's events is
sealed, then VACUUM and CHECKPOINT, so that psql's side does not pay for Tillit's writes.

Target (issue #31): Tillit at least 0.5 x psql's rows/s at a peak RSS under 150 MB, with one
access event per member exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import psutil

from bench.seed import AUDIENCE_PURPOSE, prepare_audience_database, seed_audience
from bench.serving import RssSampler
from gateway.settings import Settings
from gateway.store import db as gateway_db
from gateway.store.embedded import ensure_database, with_database

DATABASE = "tillit_bench_audience"
DEFAULT_MEMBERS = 1_000_000
HEADER = "action,id,reason,firstName,lastName,email,phone,tier,points,memberSince,membershipStatus"
TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0

# The same members and columns as the export (`reason` is empty on an upsert line), in
# PostgreSQL's own text forms: a member's consent is the newest event of (member, purpose) by seq
# (the view consent_states), and it holds when it is an EXPLICIT grant on the notice in force that
# has not expired.
COPY = (
    "\\copy (SELECT 'upsert' AS action, m.id, '' AS reason, m.first_name AS \"firstName\", "
    'm.last_name AS "lastName", m.email, m.phone, m.tier, m.points, '
    'm.member_since AS "memberSince", m.membership_status AS "membershipStatus" FROM members m '
    "JOIN LATERAL (SELECT kind, method, notice_version, expires_at FROM consent_states "
    "WHERE member_id = m.id AND purpose_key = 'email_marketing' LIMIT 1) c ON true "
    "WHERE c.kind = 'GRANTED' AND c.method = 'EXPLICIT' AND c.notice_version = '2026-01' "
    "AND c.expires_at > now() ORDER BY m.id) TO '/dev/null' WITH (FORMAT csv, HEADER)"
)

_EVENTS = (
    "SELECT count(*) AS events, count(member_id) AS member_events, "
    "count(DISTINCT member_id) AS members FROM access_events WHERE id > $1"
)


def database_name(members: int) -> str:
    """S5's database beside the benchmark's: one for each size, so that a small run during
    development never finds a million members, nor the other way round."""
    return DATABASE if members == DEFAULT_MEMBERS else f"{DATABASE}_{members}"


async def prepare(bench_url: str, members: int, *, name: str) -> tuple[str, str, float, bool]:
    """Create, migrate and seed S5's database on the benchmark database's server: its URL, its
    app client's key, the seconds it took, and whether members were seeded (False: reused)."""
    began = time.perf_counter()
    await ensure_database(bench_url, database_name(members))
    url = with_database(bench_url, database_name(members))
    engine = gateway_db.create_engine(
        url, Settings(dev=True, db_statement_timeout_ms=3_600_000), pool_size=1
    )
    try:
        key = await prepare_audience_database(engine, name=name)
        seeded = await seed_audience(engine, count=members)
    finally:
        await engine.dispose()
    return url, key, time.perf_counter() - began, seeded


def _run(url: str, work: Callable[[asyncpg.Connection], Any]) -> Any:
    """`work(connection)` on a connection of its own (outside the timed runs)."""

    async def run() -> Any:
        connection = await asyncpg.connect(gateway_db.asyncpg_dsn(url))
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


class ClusterCpu:
    """CPU seconds used by the PostgreSQL cluster serving `url` when it runs on this machine: the
    postmaster, its live children, and its ended children (a psql's backend is gone by the time
    its run is counted; the postmaster has reaped it, so its time is in the postmaster's
    children_user and children_system). Only this cluster's processes, not every `postgres` on a
    shared machine. `read()` is None when the server is elsewhere."""

    def __init__(self, url: str) -> None:
        async def postmaster(connection: asyncpg.Connection) -> psutil.Process | None:
            backend = await connection.fetchval("SELECT pg_backend_pid()")  # while it lives
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(psutil.Process(backend).ppid())
                if parent.name().startswith("postgres"):
                    return parent
            return None

        self.postmaster: psutil.Process | None = _run(url, postmaster)

    def children(self) -> set[int]:
        return set() if self.postmaster is None else {c.pid for c in self.postmaster.children()}

    def _settling(self, before: set[int] | None) -> bool:
        if self.postmaster is None:
            return False
        children = self.postmaster.children()
        if before is not None and {c.pid for c in children} - before:
            return True
        zombie = False
        for child in children:
            with contextlib.suppress(psutil.Error):
                zombie = zombie or child.status() == psutil.STATUS_ZOMBIE
        return zombie

    def reaped(self, before: set[int] | None = None, timeout: float = 5.0) -> None:
        """Wait until no backend has ended unreaped and, with `before`, until the backends begun
        since have ended (psql exits before its backend does): an ended backend's time is then in
        the postmaster's, not lost between a read of the one and of the other."""
        deadline = time.monotonic() + timeout
        while self._settling(before) and time.monotonic() < deadline:
            time.sleep(0.02)

    def read(self) -> float | None:
        if self.postmaster is None:
            return None
        times = self.postmaster.cpu_times()
        total = float(times.user + times.system + times.children_user + times.children_system)
        for child in self.postmaster.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children."""
    process = psutil.Process(pid)
    total = float(sum(process.cpu_times()[:2]))
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def _per_thousand(seconds: float | None, rows: int) -> float | None:
    return None if seconds is None or rows == 0 else seconds / rows * 1000


def tillit_round(
    start: Callable[[], Any], url: str, key: str, cpu: ClusterCpu, *, export_format: str = "csv"
) -> dict[str, Any]:
    """One export through a fresh Tillit server (`start()`: a bench.run.Server). An export that
    fails (an error status, a stream cut short) is recorded with its `error` and what it sent,
    not raised: the rounds and scenarios after it still run."""
    last_event = int(
        _run(url, lambda c: c.fetchval("SELECT coalesce(max(id), 0) FROM access_events"))
    )
    server = start()
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
    error: str | None = None
    export_id: str | None = None
    manifest: dict[str, Any] = {}
    lines = size = 0
    first_line = b""
    # (seconds, lines so far) about once a second: where in the export the time goes.
    progress: list[tuple[float, int]] = []
    try:
        sampler = RssSampler(server.process.pid)
        server_cpu, sealer_cpu = _process_cpu(server.process.pid), _process_cpu(server.sealer.pid)
        pg_cpu = cpu.read()
        sampler.start()
        began = time.perf_counter()
        try:
            with httpx.stream(
                "GET",
                f"{server.url}/audiences/export",
                params={"purpose": AUDIENCE_PURPOSE, "format": export_format},
                headers=headers,
                timeout=1800,
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(f"status {response.status_code}: {response.text[:300]}")
                export_id = response.headers.get("X-Tillit-Export")
                for chunk in response.iter_raw():
                    if not first_line:
                        first_line = chunk.split(b"\n", 1)[0]
                        progress.append((time.perf_counter() - began, 0))
                    lines += chunk.count(b"\n")
                    size += len(chunk)
                    now = time.perf_counter() - began
                    if now - progress[-1][0] >= 1.0:
                        progress.append((now, lines))
        except (httpx.HTTPError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            elapsed = time.perf_counter() - began
            sampler.stop()
        server_spent = _process_cpu(server.process.pid) - server_cpu
        sealer_spent = _process_cpu(server.sealer.pid) - sealer_cpu
        cpu.reaped()  # the export's own connection is closed as its stream ends
        pg_after = cpu.read()
        pg_spent = None if pg_cpu is None or pg_after is None else pg_after - pg_cpu
        if export_id and error is None:
            answer = httpx.get(
                f"{server.url}/audiences/export/manifest",
                params={"export": export_id},
                headers=headers,
                timeout=60,
            )
            answer.raise_for_status()
            manifest = answer.json()
    finally:
        server.stop()
    counted = max(lines - 1, 0) if export_format == "csv" else lines
    rows = int(manifest.get("rows", counted))
    events = _run(url, lambda c: c.fetchrow(_EVENTS, last_event))
    return {
        "export": export_id,
        "error": error,
        "rows": rows,
        "lines_less_header": counted,
        "header": first_line.decode("utf-8", "replace").strip(),
        "bytes": size,
        "seconds": elapsed,
        "first_byte_s": progress[0][0] if progress else None,
        "progress": [*progress, (elapsed, lines)],
        "rows_per_s": rows / elapsed,
        "start_rss_mb": sampler.first / 2**20,
        "peak_rss_mb": sampler.peak / 2**20,
        "cpu_server_s": server_spent,
        "cpu_sealer_s": sealer_spent,
        "cpu_pg_s": pg_spent,
        "cpu_server_s_per_1000": _per_thousand(server_spent, rows),
        "cpu_pg_s_per_1000": _per_thousand(pg_spent, rows),
        "events": int(events["events"]),
        "member_events": int(events["member_events"]),
        "members_with_events": int(events["members"]),
        "events_per_member": int(events["member_events"]) / rows if rows else None,
    }


def psql_round(url: str, cpu: ClusterCpu) -> dict[str, Any]:
    """The same rows by psql \\copy (no audit), to /dev/null."""
    plain = gateway_db.asyncpg_dsn(url)
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    backends = cpu.children()
    pg_cpu = cpu.read()
    began = time.perf_counter()
    result = subprocess.run(  # psql from the system, our own statement
        ["psql", plain, "-X", "-v", "ON_ERROR_STOP=1", "-c", COPY],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - began
    cpu.reaped(backends)
    pg_after = cpu.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    copied = re.search(r"COPY (\d+)", result.stdout)
    if copied is None:
        raise RuntimeError(f"psql said {result.stdout!r} {result.stderr!r}")
    rows = int(copied.group(1))
    pg_spent = None if pg_cpu is None or pg_after is None else pg_after - pg_cpu
    client_spent = (after.ru_utime + after.ru_stime) - (client.ru_utime + client.ru_stime)
    return {
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "cpu_psql_s": client_spent,
        "cpu_pg_s": pg_spent,
        "cpu_pg_s_per_1000": _per_thousand(pg_spent, rows),
    }


def settle(url: str, seal: Callable[[], int]) -> tuple[int, str]:
    """Outside the timed runs: seal what an export left unsealed, VACUUM (the insert-driven
    autovacuum of the export's events would otherwise run during the next side), CHECKPOINT."""
    began = time.perf_counter()
    sealed = seal()

    async def vacuum(connection: asyncpg.Connection) -> None:
        await connection.execute("VACUUM")
        await connection.execute("CHECKPOINT")

    _run(url, vacuum)
    spent = time.perf_counter() - began
    return sealed, f"sealed {sealed} events, vacuumed, checkpointed ({spent:.1f} s)"


def audience_scenario(
    start: Callable[[], Any], seal: Callable[[], int], *, url: str, key: str, rounds: int
) -> dict[str, Any]:
    """S5 on the database at `url`: `start()` starts a Tillit server on it (bench.run.Server),
    `seal()` seals its log; `key` is its audience client's key."""
    cpu = ClusterCpu(url)
    members = int(_run(url, lambda c: c.fetchval("SELECT count(*) FROM members")))
    runs: dict[str, Any] = {"members": members, "tillit": [], "psql": []}
    # Once before the rounds, so that neither side reads the members from disk and the other
    # from the cache (Tillit goes first in each round).
    print(f"  S5: {settle(url, seal)[1]}", flush=True)
    warm = psql_round(url, cpu)
    print(f"  S5 untimed psql copy: {warm['rows']} of {members} members", flush=True)
    header = ""
    for round_ in range(rounds):
        tillit = tillit_round(start, url, key, cpu)
        # What the sealer had not sealed of the export's events when its server stopped.
        tillit["sealed_after"], settled = settle(url, seal)
        print(f"  S5 round {round_ + 1}: {settled}", flush=True)
        psql = psql_round(url, cpu)
        if tillit["header"] != header:
            header = tillit["header"]
            print(f"  S5 export header: {header} (psql: {HEADER})", flush=True)
        runs["tillit"].append(tillit)
        runs["psql"].append(psql)
        if tillit["error"]:
            print(
                f"  S5 round {round_ + 1}: tillit's export FAILED after {tillit['seconds']:.1f} s "
                f"and {tillit['rows']} rows ({tillit['member_events']} member access events): "
                f"{tillit['error']}; psql {psql['rows_per_s']:.0f} rows/s",
                flush=True,
            )
            continue
        print(
            f"  S5 round {round_ + 1}: tillit {tillit['rows_per_s']:.0f} rows/s "
            f"({tillit['rows']} rows, peak RSS {tillit['peak_rss_mb']:.0f} MB, CPU per 1,000 "
            f"members {_seconds(tillit['cpu_server_s_per_1000'])} + PostgreSQL "
            f"{_seconds(tillit['cpu_pg_s_per_1000'])}, {tillit['member_events']} access events "
            f"for {tillit['members_with_events']} members), psql {psql['rows_per_s']:.0f} rows/s "
            f"({psql['rows']} rows, PostgreSQL {_seconds(psql['cpu_pg_s_per_1000'])} per "
            f"1,000), ratio {tillit['rows_per_s'] / psql['rows_per_s']:.2f}",
            flush=True,
        )
    return runs


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} s"


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return float(statistics.median(values)) if values else None


def summarise(s5: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds whose export finished; the failed ones are counted and named."""
    pairs = [(t, p) for t, p in zip(s5["tillit"], s5["psql"], strict=True) if not t["error"]]
    failed = [t["error"] for t in s5["tillit"] if t["error"]]
    psql = s5["psql"]
    summary: dict[str, Any] = {
        "members": s5["members"],
        "psql_rows": psql[0]["rows"] if psql else None,
        "psql_rows_per_s": _median(psql, "rows_per_s"),
        "psql_cpu_pg_s_per_1000": _median(psql, "cpu_pg_s_per_1000"),
        "failed_exports": len(failed),
        "errors": failed,
        "within_target": False,
    }
    if not pairs:
        return summary
    tillit = [t for t, _ in pairs]
    rows = sum(t["rows"] for t in tillit)
    summary |= {
        "rows": tillit[0]["rows"],
        "same_rows": all(t["rows"] == p["rows"] == t["lines_less_header"] for t, p in pairs),
        "header": tillit[0]["header"],
        "header_as_psql": tillit[0]["header"] == HEADER,
        "tillit_rows_per_s": _median(tillit, "rows_per_s"),
        "tillit/psql": float(
            statistics.median(t["rows_per_s"] / p["rows_per_s"] for t, p in pairs)
        ),
        "peak_rss_mb": max(t["peak_rss_mb"] for t in tillit),
        "cpu_server_s_per_1000": _median(tillit, "cpu_server_s_per_1000"),
        "cpu_pg_s_per_1000": _median(tillit, "cpu_pg_s_per_1000"),
        "events_per_member": sum(t["member_events"] for t in tillit) / rows if rows else 0.0,
        "one_event_per_member": all(
            t["member_events"] == t["rows"] == t["members_with_events"] for t in tillit
        ),
    }
    summary["within_target"] = (
        not failed
        and summary["tillit/psql"] >= TARGET_RATIO
        and summary["peak_rss_mb"] < TARGET_RSS_MB
        and summary["one_event_per_member"]
    )
    return summary


def table_row(s5: dict[str, Any]) -> str:
    failed = (
        f"; {s5['failed_exports']} export(s) FAILED ({s5['errors'][0][:120]})"
        if s5["failed_exports"]
        else ""
    )
    psql = (
        f"psql {s5['psql_rows_per_s']:.0f} rows/s, PostgreSQL "
        f"{_seconds(s5['psql_cpu_pg_s_per_1000'])} per 1,000"
    )
    if "rows" not in s5:
        return (
            f"| S5 audience export of {s5['members']} members | every export FAILED | {psql} | | "
            f"{s5['errors'][0][:200] if s5['errors'] else ''} |"
        )
    return (
        f"| S5 audience export, {s5['rows']} of {s5['members']} members | "
        f"{s5['tillit_rows_per_s']:.0f} rows/s, peak RSS {s5['peak_rss_mb']:.0f} MB, CPU per "
        f"1,000 members {_seconds(s5['cpu_server_s_per_1000'])} + PostgreSQL "
        f"{_seconds(s5['cpu_pg_s_per_1000'])} | {psql}"
        f"{'' if s5['same_rows'] else ' (ROWS DIFFER)'} | "
        f"{s5['events_per_member']:.2f} access events per member exported | "
        f"tillit/psql {s5['tillit/psql']:.2f}; "
        f"{'within' if s5['within_target'] else 'OVER'} (0.5, 150 MB, 1 event){failed} |"
    )
