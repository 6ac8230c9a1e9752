"""`make bench`: Tillit beside the reference servers, on one database, in one run.

Seeds a benchmark database (100,000 members, half consenting to personalized_offers; 1,000,000
access events for the export), then for each scenario serves and loads the servers in turn
(A B C A B C ...), with production settings: one worker, no GraphiQL, JSON logs to a file. The load
generator is wrk with a Lua script, concurrency 16. Prints medians and ratios; writes
bench/results/<time>.json.

Environment: DATABASE_URL (default: the embedded PostgreSQL in bench/.pgdata), BENCH_ROUNDS (3),
BENCH_SECONDS (6), BENCH_SCENARIOS (S1,S2,S3,S4), BENCH_EVENTS (1000000).
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
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bench.hostile import refusal_cost
from bench.seed import prepare_database, seed_events, seed_members
from bench.serving import free_port, uvicorn_command
from gateway.settings import Settings
from gateway.signing import Signer
from gateway.store import db as gateway_db
from gateway.store import migrate
from gateway.store.embedded import ensure_database, start_embedded, with_database

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = 16
SERVERS = {
    "tillit": "gateway.app:create_app_from_environment",
    "raw": "bench.servers:raw_factory",
    "bare": "bench.servers:bare_factory",
}


class Server:
    """One server process: uvicorn, one worker, production settings, logs to a file."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        log = (RESULTS / f"{name}.log").open("ab")
        self.process = subprocess.Popen(  # our own interpreter and arguments
            uvicorn_command(SERVERS[name], self.port),
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
        self.process.terminate()
        self.process.wait(timeout=20)


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
    finally:
        await engine.dispose()
    return {"app": app, "auditor": auditor}


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
    runs: dict[str, list[dict[str, Any]]] = {server: [] for server in servers}
    for round_ in range(rounds):
        for server_name in servers:
            server = Server(server_name, server_env(url))
            try:
                # A short warm-up, so caches and pools are filled as in steady state.
                wrk(server.url, script, 1, {"BENCH_IDS": str(ids), "BENCH_KEY": keys["app"]})
                result = wrk(
                    server.url, script, seconds, {"BENCH_IDS": str(ids), "BENCH_KEY": keys["app"]}
                )
            finally:
                server.stop()
            runs[server_name].append(result)
            print(
                f"  {name} round {round_ + 1} {server_name}: {result['rps']:.0f} req/s "
                f"p50 {result['p50_us'] / 1000:.1f} ms p99 {result['p99_us'] / 1000:.1f} ms "
                f"errors {result['socket_errors'] + result['status_errors']}",
                flush=True,
            )
    return runs


class RssSampler(threading.Thread):
    """Samples a process's resident memory every 50 ms and keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop_sampling = threading.Event()

    def run(self) -> None:
        while not self._stop_sampling.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop_sampling.set()
        self.join()


def export_scenario(url: str, keys: dict[str, str], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """S4: the whole log as CSV through /audit/export, against psql \\copy of the same rows."""
    runs: dict[str, list[dict[str, Any]]] = {"tillit": [], "psql": []}
    start, end = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    plain = gateway_db.asyncpg_dsn(url)
    copy = (
        "\\copy (SELECT s.position, e.* FROM audit_seals s JOIN access_events e "
        "ON e.id = s.event_id ORDER BY s.position) TO STDOUT WITH CSV HEADER"
    )
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


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    seconds = int(os.environ.get("BENCH_SECONDS", "6"))
    scenarios = os.environ.get("BENCH_SCENARIOS", "S1,S2,S3,S4").split(",")
    events = int(os.environ.get("BENCH_EVENTS", "1000000"))
    url = os.environ.get("DATABASE_URL")
    if url is None:
        admin = start_embedded(HERE / ".pgdata")
        asyncio.run(ensure_database(admin, "tillit_bench"))
        url = with_database(admin, "tillit_bench")
    url = gateway_db.normalize_url(url)
    print(f"preparing the benchmark database ({os.cpu_count()} cores)", flush=True)
    began = time.perf_counter()
    keys = asyncio.run(prepare(url, events if "S4" in scenarios else 0))
    print(f"  ready in {time.perf_counter() - began:.0f} s", flush=True)
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
        results["S1"] = load_scenario("S1", "member.lua", ["tillit", "raw", "bare"], **common)
    if "S2" in scenarios:
        results["S2"] = load_scenario("S2", "members.lua", ["tillit", "raw", "bare"], **common)
    if "S3" in scenarios:
        results["S3"] = load_scenario("S3", "consent.lua", ["tillit"], **common)
    if "S4" in scenarios:
        results["S4"] = export_scenario(url, keys, rounds)
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
                }
                for server, runs in results[scenario].items()
            }
    s1 = summary.get("S1")
    if s1:
        summary["S1"]["tillit/bare"] = s1["tillit"]["rps"] / s1["bare"]["rps"]
        summary["S1"]["tillit/raw"] = s1["tillit"]["rps"] / s1["raw"]["rps"]
    if "S2" in summary:
        for server in ("tillit", "raw", "bare"):
            summary["S2"][server]["members_per_s"] = summary["S2"][server]["rps"] * 100
        if s1:
            summary["S2"]["members_per_s/S1_rps"] = (
                summary["S2"]["tillit"]["members_per_s"] / s1["tillit"]["rps"]
            )
    if "S3" in summary and s1:
        summary["S3"]["tillit/S1"] = summary["S3"]["tillit"]["rps"] / s1["tillit"]["rps"]
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
    summary["R1"] = results.get("R1", [])
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"\nmedians, {summary['cores']} cores, concurrency {CONCURRENCY}\n",
        "| scenario | tillit | raw | bare | ratios |",
        "|---|---|---|---|---|",
    ]
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
    for refusal in summary.get("R1", ()):
        lines.append(
            f"| R1 refusing a {refusal['fragments']}-fragment doubling document "
            f"({refusal['bytes']} bytes, a new operation name each) | median "
            f"{refusal['median_ms']:.2f} ms, max {refusal['max_ms']:.2f} ms | | | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
