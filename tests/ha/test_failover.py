"""Failover under load on a real HA stack (`make hatest`): Patroni with etcd managing two
PostgreSQL 15 nodes in synchronous mode, two gateway processes on the libpq multi-host URL, and a
load client that keeps a ledger. Faults, in turn on one cluster: kill -9 of the leader, the
leader's network going silent, loss of the synchronous standby. After each:

- no answered profile without its access event on the server that is now the leader;
- no acknowledged consent change lost;
- nothing but 200 and 503 answered, and nothing hung;
- service back within 10 s of the new leader (of the fault, when the leader stays), without
  restarting a gateway;
- sealing resumed; and at the end `tillit audit verify` says OK.

HATEST_FORM=short (CI, under 5 minutes) holds each phase for a few seconds; the full form
(default) longer. The figures go to bench/results/hatest-<form>.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.loadtest import Gateway, World, fresh_database, prepare
from gateway.store.connect import Connector, Deadlines, parse_url
from tests.ha.cluster import Cluster, Node, missing_tools
from tests.ha.ledger import Ledger, Window

FORM = os.environ.get("HATEST_FORM", "full")
BEFORE, AFTER = (3.0, 4.0) if FORM == "short" else (15.0, 20.0)
MEMBERS = 200 if FORM == "short" else 2_000
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
BACK_WITHIN_SECONDS = 10.0
SEAL_INTERVAL_SECONDS = 1.0
figures: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def tools() -> None:
    missing = missing_tools()
    assert not missing, f"the HA stack needs Debian's {' '.join(missing)} (apt-get install)"


class Stack:
    def __init__(self, cluster: Cluster, world: World, gateways: list[Gateway]) -> None:
        self.cluster = cluster
        self.world = world
        self.gateways = gateways
        members = world.member_ids
        self.ledger = Ledger(
            gateways=[g.url for g in gateways],
            app_key=world.app_key,
            readers=members[: len(members) // 2],
            writers=[members[len(members) // 2 + i :: 4][:20] for i in range(4)],
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's temporary folder, which only root may enter: PostgreSQL runs as
    # `postgres`. The folder stays for its logs; each run makes a new one.
    root = Path(tempfile.mkdtemp(prefix="tillit-hatest-"))
    root.chmod(0o755)
    print(f"HA stack in {root}", file=sys.stderr)
    cluster = Cluster.create(root)
    gateways: list[Gateway] = []
    try:
        cluster.start()
        url = asyncio.run(fresh_database(cluster.url(), "tillit"))
        world = asyncio.run(prepare(url, members=MEMBERS))
        env = {**world.env, "TILLIT_SEAL_INTERVAL_SECONDS": str(SEAL_INTERVAL_SECONDS)}
        RESULTS.mkdir(exist_ok=True)
        gateways = [Gateway(env, workers=1, log=root / f"gateway{i}.log") for i in range(2)]
        stack = Stack(cluster, world, gateways)
        stack.ledger.start(max_seconds=900)
        yield stack
        stack.ledger.stop()
    finally:
        for gateway in gateways:
            gateway.stop()
        cluster.stop()
        (RESULTS / f"hatest-{FORM}.json").write_text(json.dumps(figures, indent=2) + "\n")


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds:g} s")


def run_fault(
    stack: Stack, name: str, fault: Callable[[], None], *, handled: Callable[[], bool], what: str
) -> Window:
    """Load, the fault, the HA manager's answer to it (`handled`: a new leader, or a standby no
    longer waited for), recovery, more load."""
    time.sleep(BEFORE)
    fault_at = time.monotonic()
    fault()
    handled_at = wait_for(handled, 90, what)
    wait_for(
        lambda: (
            Window(name, stack.ledger.since(fault_at), fault_at, handled_at).back_at is not None
            and time.monotonic() - fault_at > 1
        ),
        60,
        "service after the fault",
    )
    time.sleep(AFTER)
    return Window(name, stack.ledger.since(fault_at - 0.5), fault_at, handled_at)


async def _books(url: str, window: Window) -> dict[str, Any]:
    """What the leader holds of what the ledger says was answered or acknowledged."""
    # The gateway's own connector: a silent node costs one connect timeout, not asyncpg's 60 s.
    connection = await Connector(parse_url(url), Deadlines(), {})()
    try:
        answered = [e.request_id for e in window.entries if e.profile]
        audited = await connection.fetchval(
            "SELECT count(DISTINCT request_id) FROM access_events "
            "WHERE request_id = ANY($1::text[]) AND operation = 'member'",
            answered,
        )
        receipts = [e.receipt for e in window.entries if e.receipt]
        kept = await connection.fetchval(
            "SELECT count(*) FROM consent_events WHERE id::text = ANY($1::text[])", receipts
        )
        # A withdrawal's access event commits with it, in one transaction.
        withdrawals = [e.request_id for e in window.entries if e.withdrawn]
        withdrawn = await connection.fetchval(
            "SELECT count(DISTINCT request_id) FROM access_events "
            "WHERE request_id = ANY($1::text[]) AND operation = 'withdrawConsent'",
            withdrawals,
        )
        last_checkpoint = await connection.fetchval(
            "SELECT extract(epoch FROM now() - max(created_at)) FROM audit_checkpoints"
        )
    finally:
        await connection.close()
    return {
        "profiles_answered": len(answered),
        "profiles_audited": int(audited),
        "grants_acknowledged": len(receipts),
        "grants_kept": int(kept),
        "withdrawals_acknowledged": len(withdrawals),
        "withdrawals_kept": int(withdrawn),
        "newest_checkpoint_age_seconds": float(last_checkpoint),
    }


def check(stack: Stack, window: Window) -> dict[str, Any]:
    """The assertions every fault must pass; returns the figures."""
    owner = stack.cluster.url(database="tillit")
    # Sealing resumed: a checkpoint newer than two intervals, after recovery.
    wait_for(
        lambda: (
            asyncio.run(_books(owner, window))["newest_checkpoint_age_seconds"]
            < 2 * SEAL_INTERVAL_SECONDS
        ),
        10 * SEAL_INTERVAL_SECONDS,
        "a fresh checkpoint",
    )
    books = asyncio.run(_books(owner, window))
    summary = {**window.summary(), **books}
    figures.append(summary)
    print(json.dumps(summary), file=sys.stderr)

    statuses = {e.status for e in window.entries}
    assert statuses <= {200, 503}, summary  # no 500, and nothing hung (0)
    assert books["profiles_audited"] == books["profiles_answered"], summary
    assert books["grants_kept"] == books["grants_acknowledged"], summary
    assert books["withdrawals_kept"] == books["withdrawals_acknowledged"], summary
    back = summary["back_after_seconds"]
    assert isinstance(back, float), summary
    assert back <= BACK_WITHIN_SECONDS, summary
    assert books["profiles_answered"] > 0
    return summary


def rejoin(stack: Stack, node: Node) -> None:
    """Bring the node back as a replica and wait for it to be the synchronous standby again."""
    if node.process is None:
        stack.cluster.start_node(node)
    wait_for(node.is_sync_standby, 120, f"{node.name} as the synchronous standby again")


def fence_and_rejoin(stack: Stack, node: Node) -> None:
    """A node that went silent is reset before its network returns, as Patroni's watchdog (or a
    fencing agent) does on real hosts: a Patroni that was cut off from etcd may otherwise act on
    what it knew before (seen here: the old leader's stale update took the leader key back and
    demoted the new leader, discarding what it had committed alone)."""
    stack.cluster.kill(node)
    stack.cluster.restore_network()
    rejoin(stack, node)


def test_kill_9_of_the_leader(stack: Stack) -> None:
    old, new = stack.cluster.nodes
    assert old.is_leader()
    window = run_fault(
        stack,
        "kill -9 of the leader",
        lambda: stack.cluster.kill(old),
        handled=new.is_leader,
        what=f"{new.name} as the new leader",
    )
    check(stack, window)
    rejoin(stack, old)


def test_the_leaders_network_goes_silent(stack: Stack) -> None:
    new, old = stack.cluster.nodes  # node1 leads since the kill
    assert old.is_leader()
    window = run_fault(
        stack,
        "the leader's network goes silent",
        lambda: stack.cluster.silence(old),
        handled=new.is_leader,
        what=f"{new.name} as the new leader",
    )
    check(stack, window)
    fence_and_rejoin(stack, old)


def test_loss_of_the_synchronous_standby(stack: Stack) -> None:
    """The standby's network goes silent: the worst way to lose it (a killed one resets its
    connections, and the primary lets go of it at once). Every commit waits for it until the
    primary's wal_sender_timeout and Patroni drop it; requests end at their deadline meanwhile."""
    leader = stack.cluster.leader()
    assert leader is not None
    [standby] = [n for n in stack.cluster.nodes if n is not leader]
    assert standby.is_sync_standby()
    window = run_fault(
        stack,
        "loss of the synchronous standby (silent)",
        lambda: stack.cluster.silence(standby),
        handled=leader.has_no_sync_standby,
        what="the leader no longer waiting for the standby",
    )
    check(stack, window)
    fence_and_rejoin(stack, standby)


def test_nothing_answered_or_acknowledged_in_the_whole_run_was_lost(stack: Stack) -> None:
    """The books of every fault again, over the whole run, on the leader at the end: a later
    failover must not undo what an earlier one kept."""
    stack.ledger.stop()
    entries = stack.ledger.since(0)
    whole = Window("the whole run", entries, entries[0].started, entries[0].started)
    books = asyncio.run(_books(stack.cluster.url(database="tillit"), whole))
    figures.append({"whole run": books, "requests": len(entries)})

    assert books["profiles_audited"] == books["profiles_answered"], books
    assert books["grants_kept"] == books["grants_acknowledged"], books
    assert books["withdrawals_kept"] == books["withdrawals_acknowledged"], books


def test_the_trail_verifies_after_every_fault(stack: Stack) -> None:
    stack.ledger.stop()
    env = {**os.environ, **stack.world.env, "DATABASE_URL": stack.cluster.url(database="tillit")}
    sealed = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "seal", "--wait", "60"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    verified = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    figures.append({"verify": verified.stdout.strip() or verified.stderr.strip()})

    assert sealed.returncode == 0, sealed.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK")
