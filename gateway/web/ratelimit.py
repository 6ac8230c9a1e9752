"""Per-client rate limiting, shared by every worker and host through PostgreSQL.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): each
subject has a theoretical arrival time `tat`; a request is allowed when `max(tat, now) + interval`
lies no further ahead of `now` than the burst allows, and then moves `tat` there.

The shared `tat` lives in an UNLOGGED table. A worker decides a subject's first request with one
statement on that table (so a new worker, or one that has not seen the caller for a minute, starts
from what every other worker has counted), and later requests from its own copy of `tat`, which a
background task reconciles with the table every `sync_seconds` (one statement for all the
subjects it saw). A caller spread over N workers can therefore exceed its rate by what N - 1
workers admit in one sync interval; in exchange a request costs no round trip and a busy client's
row is written a few times a second, not once per request (measured: a per-request statement was
about 5% of a profile read, and one hot row every worker updates is a point of contention).

Subjects: an app client by its id, a member by theirs, an anonymous caller by its address; the
public routes (the audit log's keys, checkpoints, tiles and proofs) count each address in a bucket
of their own (TILLIT_PUBLIC_RATE_LIMIT_PER_SECOND), whatever credentials it sends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time

import asyncpg
import structlog

from gateway.domain import Anonymous, ClientPrincipal, MemberPrincipal, Principal
from gateway.errors import RateLimited
from gateway.settings import Settings
from gateway.store.db import Raw, raw_operation

log = structlog.get_logger("tillit.ratelimit")

# One subject's request, decided against the shared state: the new tat if allowed, else NULL and
# the current one (for Retry-After).
_DECIDE = """
WITH current AS (SELECT tat FROM rate_limits WHERE subject = $1),
granted AS (
    INSERT INTO rate_limits AS r (subject, tat)
    VALUES ($1, clock_timestamp() + make_interval(secs => $2))
    ON CONFLICT (subject) DO UPDATE
        SET tat = greatest(r.tat, clock_timestamp()) + make_interval(secs => $2)
        WHERE greatest(r.tat, clock_timestamp()) + make_interval(secs => $2)
              <= clock_timestamp() + make_interval(secs => $3)
    RETURNING tat
)
SELECT extract(epoch FROM (SELECT tat FROM granted)) AS granted,
       extract(epoch FROM (SELECT tat FROM current)) AS current
"""

# The requests each subject made here since the last sync, added to the shared state; returns it.
_SYNC = """
WITH t AS (SELECT * FROM unnest($1::text[], $2::float8[]) AS t(subject, seconds))
INSERT INTO rate_limits AS r (subject, tat)
SELECT subject, clock_timestamp() + make_interval(secs => seconds) FROM t
ON CONFLICT (subject) DO UPDATE
    SET tat = greatest(r.tat, clock_timestamp())
              + make_interval(secs => (SELECT seconds FROM t WHERE t.subject = excluded.subject))
RETURNING subject, extract(epoch FROM tat) AS tat
"""

FORGET_IDLE_RATE_LIMITS = (
    "DELETE FROM rate_limits WHERE tat < clock_timestamp() - interval '1 minute'"
)
# A subject not seen for this long is decided against the shared state again.
_LOCAL_MEMORY_SECONDS = 60.0


def public_limiter(settings: Settings) -> RateLimiter | None:
    """The public routes' limiter (one bucket per client address), or None when it is off."""
    if settings.public_rate_limit_per_second <= 0:
        return None
    return RateLimiter(
        settings.public_rate_limit_per_second,
        settings.public_rate_limit_burst,
        sync_seconds=settings.rate_limit_sync_seconds,
    )


def public_subject(address: str | None) -> str:
    return f"public:{(address or 'unknown')[:60]}"


def subject_of(principal: Principal, address: str | None) -> str:
    if isinstance(principal, ClientPrincipal):
        return f"client:{principal.id}"
    if isinstance(principal, MemberPrincipal):
        return f"member:{principal.member_id}"
    assert isinstance(principal, Anonymous)
    return f"anonymous:{(address or 'unknown')[:60]}"


class RateLimiter:
    """One worker's view of the shared rate limits."""

    def __init__(self, per_second: float, burst: int, *, sync_seconds: float = 0.2) -> None:
        self.interval = 1.0 / per_second
        self.tolerance = burst * self.interval
        self.sync_seconds = sync_seconds
        self._tat: dict[str, float] = {}  # epoch seconds
        self._pending: collections.Counter[str] = collections.Counter()

    def check_known(self, subject: str) -> bool:
        """Count one request of a subject this worker knows, with no statement: True when
        admitted, RateLimited when over; False when the subject needs `check` (and a connection).
        A caller over its rate is so refused before it costs a connection."""
        now = time.time()
        tat = self._tat.get(subject)
        if tat is None or tat < now - _LOCAL_MEMORY_SECONDS:
            return False
        candidate = max(tat, now) + self.interval
        if candidate - now > self.tolerance:
            raise self._refusal(candidate, now)
        self._tat[subject] = candidate
        self._pending[subject] += 1
        return True

    async def check(self, raw: Raw, subject: str) -> None:
        """Count one request of `subject`; RateLimited (with the seconds to wait) if over.

        Only a subject this worker does not know yet costs a statement, on the operation's
        connection.
        """
        if self.check_known(subject):
            return
        row = await raw.fetchrow(_DECIDE, subject, self.interval, self.tolerance)
        if row["granted"] is None:
            self._tat[subject] = float(row["current"])
            raise self._refusal(float(row["current"]) + self.interval, time.time())
        self._tat[subject] = float(row["granted"])

    def _refusal(self, candidate: float, now: float) -> RateLimited:
        return RateLimited(retry_after=max(1, math.ceil(candidate - now - self.tolerance)))

    async def sync(self, raw: Raw) -> None:
        """Add this worker's admitted requests to the shared state and adopt the result."""
        now = time.time()
        for subject in [s for s, t in self._tat.items() if t < now - _LOCAL_MEMORY_SECONDS]:
            del self._tat[subject]
        if not self._pending:
            return
        pending, self._pending = self._pending, collections.Counter()
        subjects = list(pending)
        try:
            rows = await raw.fetch(_SYNC, subjects, [pending[s] * self.interval for s in subjects])
        except BaseException:
            self._pending.update(pending)  # counted at the next sync instead
            raise
        for row in rows:
            # Requests admitted here while the statement ran are not in the shared state yet.
            self._tat[row["subject"]] = float(row["tat"]) + self._pending[row["subject"]] * (
                self.interval
            )

    async def forget_idle(self, raw: Raw) -> None:
        """Delete the shared state of subjects idle for a minute (any worker may: it is one
        idempotent statement, and a forgotten subject starts again from a full bucket)."""
        await raw.execute(FORGET_IDLE_RATE_LIMITS)

    async def run_sync(
        self,
        pool: asyncpg.Pool,
        stop: asyncio.Event,
        *,
        forget_seconds: float = _LOCAL_MEMORY_SECONDS,
    ) -> None:
        """The background task: sync every `sync_seconds`, and forget idle subjects every
        `forget_seconds`, until `stop`."""
        forgot = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.sync_seconds)
            forget = time.monotonic() - forgot >= forget_seconds
            if not self._pending and not forget:
                continue
            try:
                # A connection this loses (a silent database) is closed, not handed to a request.
                async with raw_operation(pool, transaction=False) as raw:
                    await self.sync(raw)
                    if forget:
                        await self.forget_idle(raw)
                        forgot = time.monotonic()
            except Exception as exc:  # the database may be away; the counts wait for it
                log.warning("ratelimit.sync_failed", error_type=type(exc).__name__)
