"""Prometheus metrics: requests and latency by operation, access decisions by purpose and outcome,
audit write latency, sealer lag and connection pool use.

Labels are bounded: the operation label is the sorted root field names (from the schema, never a
caller's operation name), the purpose label is a registered purpose or `other`. With several
worker processes (`tillit serve --workers N`) the values live in PROMETHEUS_MULTIPROC_DIR and one
scrape of any worker reports the sum over all of them.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from gateway.store import db

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "tillit_requests",
    "GraphQL operations answered, by root fields and HTTP status.",
    ["operation", "status"],
)
LATENCY = Histogram(
    "tillit_request_duration_seconds",
    "Time to answer a GraphQL operation, by root fields.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
DECISIONS = Counter(
    "tillit_access_decisions",
    "Access decisions (one per member touched), by purpose and outcome.",
    ["purpose", "outcome"],
)
AUDIT_WRITE = Histogram(
    "tillit_audit_write_duration_seconds",
    "Time to write an operation's access events and commit.",
    buckets=LATENCY_BUCKETS,
)
AUDIT_EVENTS = Counter("tillit_audit_events_written", "Access events written.")
RETRIES = Counter(
    "tillit_operation_retries",
    "Operations run again after losing a race with another transaction, by SQLSTATE.",
    ["sqlstate"],
)
POOL = Gauge(
    "tillit_db_pool_connections",
    "Database connections of the workers, by state.",
    ["state"],
    multiprocess_mode="livesum",
)
SEALER_LAG = Gauge(
    "tillit_sealer_lag_seconds",
    "Seconds since the newest signed audit checkpoint (the sealer writes one every interval).",
    multiprocess_mode="max",
)
UNSEALED = Gauge(
    "tillit_audit_unsealed_events",
    "Committed access events at or past the newest checkpoint's horizon (not yet sealed).",
    multiprocess_mode="max",
)

NOT_READY = Gauge(
    "tillit_not_ready",
    "1 for the reason the worker's last readiness probe failed (0 for the others; all 0: ready).",
    ["reason"],
    multiprocess_mode="max",
)

_pools: list[Any] = []


def watch_pools(engine: AsyncEngine, raw_pool: Any) -> None:
    """The worker's two pools: SQLAlchemy's and the raw one for the hot operations."""
    _pools[:] = [engine.pool, raw_pool]


def observe_request(operation: str, status: int, started: float) -> None:
    REQUESTS.labels(operation, str(status)).inc()
    LATENCY.labels(operation).observe(time.perf_counter() - started)
    if _pools:
        engine_pool, raw_pool = _pools
        idle = raw_pool.get_idle_size()
        POOL.labels("in_use").set(engine_pool.checkedout() + raw_pool.get_size() - idle)
        POOL.labels("idle").set(engine_pool.checkedin() + idle)


def observe_readiness(reason: str | None, reasons: Iterable[str]) -> None:
    for each in reasons:
        NOT_READY.labels(each).set(1 if each == reason else 0)


def observe_audit_write(started: float, written: int) -> None:
    AUDIT_WRITE.observe(time.perf_counter() - started)
    AUDIT_EVENTS.inc(written)


def observe_decisions(
    records: Iterable[Any],
    known: Mapping[str, Any],
    written: Mapping[tuple[str | None, str], int] | None = None,
) -> None:
    """Count an operation's decisions: its held records, and `written` (events its reads wrote
    themselves, by purpose and outcome)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter(
        # The outcome is a StrEnum: its own label value (`.value` is a slow descriptor).
        (record.purpose if record.purpose in known else "other", record.outcome)
        for record in records
    )
    for (purpose, outcome), count in (written or {}).items():
        counts[(purpose if purpose is not None and purpose in known else "other", outcome)] += count
    for (purpose, outcome), count in counts.items():
        DECISIONS.labels(purpose, outcome).inc(count)


_SEALER_STATE = text(
    """
    WITH newest AS (SELECT created_at, horizon FROM audit_checkpoints ORDER BY id DESC LIMIT 1)
    SELECT extract(epoch FROM now() - (SELECT created_at FROM newest)) AS lag,
           (SELECT count(*) FROM access_events
             WHERE txid >= coalesce((SELECT horizon FROM newest), '0'::xid8)) AS unsealed
    """
)


# A scrape must answer while the database does not (the lag then reads as infinite).
SEALER_STATE_TIMEOUT_SECONDS = 2.0


async def _sealer_state(engine: AsyncEngine) -> None:
    async with (
        asyncio.timeout(SEALER_STATE_TIMEOUT_SECONDS),
        db.engine_transaction(engine) as connection,
    ):
        row = (await connection.execute(_SEALER_STATE)).one()
    SEALER_LAG.set(float(row.lag) if row.lag is not None else float("inf"))
    UNSEALED.set(max(0, int(row.unsealed or 0)))


def _registry() -> CollectorRegistry | None:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics for the monitoring system only: it needs TILLIT_METRICS_TOKEN as a bearer
    token; without one configured the route does not exist (404)."""
    token = request.state.settings.metrics_token
    if token is None:
        return Response(status_code=404)
    presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    try:
        await _sealer_state(request.state.engine)
    except Exception:
        SEALER_LAG.set(float("inf"))
    registry = _registry()
    body = generate_latest(registry) if registry is not None else generate_latest()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
