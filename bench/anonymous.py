"""A1: what an anonymous caller can cost, and whether member reads notice.

First each kind of anonymous request alone (rate limit off, so that every request is served and
its cost counted): server and PostgreSQL CPU a request; the worst kind is the figure to hold
(target: at most 2 ms). Then an app's member reads (S1's script) alone, and again while eight
anonymous clients ask for inclusion proofs as fast as they can, with the gateway as it is
deployed (the public routes' rate per address on): the member reads' p50 and p99 with and
without them, and how many anonymous requests were refused (429).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench.serving import cpu_delta, postgres_cpu

KINDS = ("inclusion-2", "consistency", "tile", "checkpoint", "keys", "purposes")
ANONYMOUS_CLIENTS = 8


def _wrk(url: str, script: Path, seconds: int, connections: int, env: dict[str, str]) -> Any:
    return subprocess.Popen(  # wrk from Debian's packages
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def _summary(process: Any) -> dict[str, Any]:
    output, _ = process.communicate()
    summary: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def anonymous_scenario(
    start: Any, *, url: str, tree_size: int, member_env: dict[str, str], wrk_dir: Path, seconds: int
) -> dict[str, Any]:
    """`start(env)` starts a Tillit server with these extra settings and returns it (a
    bench.run.Server); `member_env` is what S1's script needs."""
    result: dict[str, Any] = {"tree_size": tree_size, "kinds": {}}
    anonymous = wrk_dir / "anonymous.lua"
    # common.lua's ids and summary, and no key: these callers are anonymous.
    shared = {"BENCH_DIR": str(wrk_dir), "BENCH_IDS": member_env["BENCH_IDS"], "BENCH_KEY": ""}
    server = start({"TILLIT_PUBLIC_RATE_LIMIT_PER_SECOND": "0"})
    try:
        for kind in KINDS:
            env = {**shared, "BENCH_ANON_KIND": kind, "BENCH_TREE_SIZE": str(tree_size)}
            _summary(_wrk(server.url, anonymous, 2, 4, env))  # warm-up
            cpu, pg = server.cpu_seconds(), postgres_cpu()
            run = _summary(_wrk(server.url, anonymous, seconds, 4, env))
            run["cpu_server_ms"] = (server.cpu_seconds() - cpu) / run["requests"] * 1e3
            run["cpu_pg_ms"] = cpu_delta(pg, postgres_cpu()) / run["requests"] * 1e3
            result["kinds"][kind] = run
            print(
                f"  A1 {kind}: {run['rps']:.0f} req/s, CPU/req {run['cpu_server_ms']:.2f} + "
                f"{run['cpu_pg_ms']:.2f} ms, errors {run['socket_errors'] + run['status_errors']}",
                flush=True,
            )
    finally:
        server.stop()
    worst = max(result["kinds"], key=lambda k: _cost(result["kinds"][k]))
    result["worst"] = {"kind": worst, "cpu_ms": _cost(result["kinds"][worst])}

    member = wrk_dir / "member.lua"
    env = {**member_env, "BENCH_DIR": str(wrk_dir)}
    server = start({})  # as deployed: the public routes' rate per address on
    try:
        _summary(_wrk(server.url, member, 2, 16, env))  # warm-up
        alone = _summary(_wrk(server.url, member, seconds, 16, env))
        hostile_env = {
            **shared,
            "BENCH_ANON_KIND": "inclusion-2",
            "BENCH_TREE_SIZE": str(tree_size),
        }
        hostile = _wrk(server.url, anonymous, seconds, ANONYMOUS_CLIENTS, hostile_env)
        beside = _summary(_wrk(server.url, member, seconds, 16, env))
        attack = _summary(hostile)
    finally:
        server.stop()
    result["member_reads"] = {
        "alone": alone,
        "with_anonymous": beside,
        "anonymous": attack,
        "p50_ratio": beside["p50_us"] / alone["p50_us"],
        "refused_share": attack["status_errors"] / max(1, attack["requests"]),
    }
    print(
        f"  A1 member reads: p50 {alone['p50_us'] / 1000:.1f} ms alone, "
        f"{beside['p50_us'] / 1000:.1f} ms beside {ANONYMOUS_CLIENTS} anonymous proof clients "
        f"({attack['rps']:.0f} req/s, {result['member_reads']['refused_share']:.0%} refused 429)",
        flush=True,
    )
    return result


def _cost(run: dict[str, Any]) -> float:
    return float(run["cpu_server_ms"] + run["cpu_pg_ms"])
