"""Per-client rate limiting, shared by every worker and host through PostgreSQL.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): each
subject has a theoretical arrival time `tat`; a request is allowed when `max(tat, now) + interval`
lies no further ahead of `now` than the burst allows, and then moves `tat` there. One statement
decides and updates, on an UNLOGGED table, in its own transaction (autocommit), so the row is
locked only for that statement and never for the length of the caller's operation.

Subjects: an app client by its id, a member by theirs, an anonymous caller by its address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.auth import Anonymous, ClientPrincipal, MemberPrincipal, Principal
from gateway.errors import RateLimited

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
SELECT EXISTS (SELECT FROM granted) AS allowed,
       extract(epoch FROM (SELECT tat FROM current) - clock_timestamp()) AS ahead
"""

# Subjects idle for this long are at their full burst again: their rows say nothing.
FORGET_IDLE_RATE_LIMITS = (
    "DELETE FROM rate_limits WHERE tat < clock_timestamp() - interval '1 minute'"
)


def subject_of(principal: Principal, address: str | None) -> str:
    if isinstance(principal, ClientPrincipal):
        return f"client:{principal.id}"
    if isinstance(principal, MemberPrincipal):
        return f"member:{principal.member_id}"
    assert isinstance(principal, Anonymous)
    return f"anonymous:{(address or 'unknown')[:60]}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        return self.burst * self.interval

    async def check(self, raw: Any, subject: str) -> None:
        """Count one request of `subject`; RateLimited (with the seconds to wait) if over.

        `raw` is an asyncpg connection outside any transaction, so the statement commits alone.
        """
        row = await raw.fetchrow(_DECIDE, subject, self.interval, self.tolerance)
        if not row["allowed"]:
            ahead = float(row["ahead"] or 0.0)
            raise RateLimited(retry_after=max(1, math.ceil(ahead - self.tolerance + self.interval)))
