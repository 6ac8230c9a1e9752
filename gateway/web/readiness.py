"""GET /readyz: may this worker take traffic? Both pools reach the database, the server accepts
writes and makes them durable in time, and the schema is at the revision this code expects.

Each check runs on a pool the requests use, under one deadline; a connection that does not answer
in time is discarded. Why a worker is not ready is the response's `reason` and the metric
`tillit_not_ready{reason}`.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import DatabaseUnavailable
from gateway.store import db
from gateway.web import metrics

log = structlog.get_logger("tillit.readiness")
READINESS_TIMEOUT_SECONDS = 3.0
WORKER = f"{socket.gethostname()}:{os.getpid()}"[:200]


class NotReady(enum.Enum):
    """Why a worker is not ready, with what the response says."""

    DATABASE_UNREACHABLE = "database unreachable"
    READ_ONLY = "the database is read-only (a standby, or a primary being demoted)"
    WRITES_NOT_DURABLE = (
        "a write did not become durable in time (a synchronous standby missing or lagging)"
    )
    SCHEMA_REVISION = "database schema is not at the expected revision; run `tillit migrate`"

    @property
    def label(self) -> str:
        return self.name.lower()


_SERVER_STATE = (
    "SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') = 'on' AS ro"
)
# One logged row per worker: the commit waits for the synchronous standby as an access event's
# does. Rows of workers gone for a day go with it.
_PROBE = """
WITH gone AS (
    DELETE FROM readiness_probes WHERE probed_at < now() - interval '1 day' AND worker <> $1
)
INSERT INTO readiness_probes (worker, probed_at) VALUES ($1, now())
ON CONFLICT (worker) DO UPDATE SET probed_at = excluded.probed_at
"""


async def _check(
    engine: AsyncEngine, raw_pool: asyncpg.Pool, expected: str
) -> tuple[NotReady | None, str | None]:
    """Why the worker is not ready (None: it is), and the schema revision when it was read."""
    step, current = NotReady.DATABASE_UNREACHABLE, None
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            with db.translated():
                async with db.engine_transaction(engine) as connection:
                    current = await db.schema_revision(connection)
                if current != expected:
                    return NotReady.SCHEMA_REVISION, current
                async with db.raw_operation(raw_pool, transaction=True) as raw:
                    state = await raw.fetchrow(_SERVER_STATE)
                    if state["recovery"] or state["ro"]:
                        return NotReady.READ_ONLY, current
                    await raw.execute(_PROBE, WORKER)
                    step = NotReady.WRITES_NOT_DURABLE  # the commit, at the block's end
    except (DatabaseUnavailable, TimeoutError) as exc:
        cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
        log.warning("readiness.failed", reason=step.label, error_type=type(cause).__name__)
        return step, current
    return None, current


async def readyz(request: Request) -> Response:
    """Ready (200) or not (503, with the reason)."""
    state = request.state
    expected: str = state.head_revision
    reason, current = await _check(state.engine, state.raw_pool, expected)
    metrics.observe_readiness(reason.label if reason else None, [r.label for r in NotReady])
    if reason is None:
        return JSONResponse({"status": "ready", "revision": current})
    body: dict[str, str | None] = {"status": "unavailable", "reason": reason.value}
    if reason is NotReady.SCHEMA_REVISION:
        body.update(expected_revision=expected, current_revision=current)
    return JSONResponse(body, status_code=503)
