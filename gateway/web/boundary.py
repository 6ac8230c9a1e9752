"""The operation boundary: one way in and out for every route that reads or changes member data.

`/graphql`, `/me/export` and `/audit/export` each run their work inside `Boundary.operation`,
which in this order

1. opens the operation's connection (`Via`: the raw pool in autocommit or in a transaction, or a
   SQLAlchemy transaction),
2. authenticates the caller (API keys through the worker's client cache),
3. counts the request against the caller's rate limit,
4. hands the work a `Context`,
5. writes the operation's access events in its transaction and commits, before any answer (a
   read, whose only writes are its events, gives its connection back and has them written with
   the events of the other reads finishing now: gateway.audit.group_commit), and
6. says every way it can end without an answer as one `Refused` (the HTTP status, code, message
   and headers the route sends): 401 for no or bad credentials, 429 over the rate limit, 403, 404
   or 400 for a refusal the work raised (audited, like every refusal), 503 when the database or
   the audit write is unavailable or the request's deadline (TILLIT_REQUEST_TIMEOUT_SECONDS)
   passed (nothing is released; the connection is discarded, see gateway.store.db).

An exception the work did not expect passes on unchanged (RequestContextMiddleware masks and
logs it), unless the work had finished: then it was the audit write or the commit that failed,
and nothing may leave (503).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.access.auth import authenticate
from gateway.audit.group_commit import GroupCommit
from gateway.domain import ErrorCode
from gateway.errors import (
    AuditUnavailable,
    Forbidden,
    NotFound,
    RateLimited,
    TillitError,
    Unauthenticated,
)
from gateway.logs import exception_summary
from gateway.settings import Settings
from gateway.store import db
from gateway.store.db import Raw
from gateway.web import metrics
from gateway.web.middleware import request_id_of
from gateway.web.ratelimit import RateLimiter, subject_of
from resolvers.context import Context

log = structlog.get_logger("tillit.boundary")


class Via(enum.Enum):
    """Which connection an operation runs on."""

    # The raw pool in autocommit: an operation that writes nothing but its access events, which
    # commit with other reads' events (gateway.audit.group_commit) before the data is sent.
    RAW_READ = "raw read"
    # The raw pool in one transaction: the consent changes, all raw SQL.
    RAW_WRITE = "raw write"
    # A SQLAlchemy transaction: everything else.
    ENGINE = "engine"


def error_body(code: ErrorCode, message: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code.value, **extensions}}]}


@dataclass
class Refused(Exception):
    """How an operation ended without its answer, in HTTP terms."""

    status: int
    code: ErrorCode
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.code, self.message),
            status_code=self.status,
            headers=self.headers or None,
        )

    @classmethod
    def of(cls, error: TillitError) -> Refused:
        if isinstance(error, Unauthenticated):
            return cls(
                401, error.code, error.message, {"WWW-Authenticate": 'Bearer realm="tillit"'}
            )
        if isinstance(error, RateLimited):
            return cls(429, error.code, error.message, {"Retry-After": str(error.retry_after)})
        if isinstance(error, AuditUnavailable):
            return cls(503, error.code, error.message, {"Retry-After": "1"})
        if isinstance(error, Forbidden):
            return cls(403, error.code, error.message)
        if isinstance(error, NotFound):
            return cls(404, error.code, error.message)
        return cls(400, error.code, error.message)


# The request's scope key that says its operation was counted against the rate limit already.
RATE_COUNTED = "tillit.rate_counted"

# Refusals that say nothing about a member or the work: not audited (no caller to name, or the
# request never started).
_UNATTRIBUTED = (Unauthenticated, RateLimited, AuditUnavailable)


class Boundary:
    """The operations of one worker: its rate limiter and settings, and request.state's pools,
    keys and caches."""

    def __init__(self, settings: Settings, *, rate_limit: RateLimiter | None) -> None:
        self.settings = settings
        self.rate_limit = rate_limit

    @classmethod
    def from_settings(cls, settings: Settings) -> Boundary:
        limiter = (
            RateLimiter(
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
                sync_seconds=settings.rate_limit_sync_seconds,
            )
            if settings.rate_limit_per_second > 0
            else None
        )
        return cls(settings, rate_limit=limiter)

    @asynccontextmanager
    async def operation(
        self, request: Request, *, via: Via, operation: str, deadline: float | None = None
    ) -> AsyncIterator[Context]:
        """Run one operation (see the module's docstring); raises Refused. `deadline` (the event
        loop's time) is the request's when it runs the operation more than once."""
        refusal: TillitError | None = None
        executed = False
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                with db.translated():
                    async with _connection(request, via) as (raw, sql):
                        context = await self._context(request, raw, sql)
                        try:
                            yield context
                        except TillitError as exc:
                            if isinstance(exc, _UNATTRIBUTED):
                                raise
                            # A refusal the work raised is answered in HTTP terms, and audited
                            # (once: the work may have recorded it already).
                            refusal = exc
                            if not context.audit.records:
                                context.refused(operation, exc)
                        executed = True
                        if via is not Via.RAW_READ:
                            await self._flush(context)
                    if via is Via.RAW_READ:
                        # With the connection given back: the read's events go in with those
                        # of the reads finishing now (gateway.audit.group_commit).
                        await self._flush_together(request.state.group_commit, context)
        except TillitError as exc:
            if isinstance(exc, AuditUnavailable):
                log.error("operation.unavailable", operation=operation, **_cause(exc))
            raise Refused.of(exc) from None
        except TimeoutError:
            # The request's deadline passed (a silent database, a commit waiting for a standby):
            # its connection was discarded and nothing it did is released.
            log.error("operation.deadline", operation=operation, executed=executed)
            raise Refused.of(AuditUnavailable()) from None
        except Exception as exc:
            if not executed:
                raise
            # The audit write or the commit failed: release nothing.
            log.error("operation.audit_unavailable", operation=operation, **exception_summary(exc))
            raise Refused.of(AuditUnavailable()) from None
        if refusal is not None:
            raise Refused.of(refusal)

    async def _context(self, request: Request, raw: Raw, sql: AsyncConnection | None) -> Context:
        state = request.state
        principal = await authenticate(
            raw,
            request.headers.get("authorization"),
            token_secret=state.token_keys,
            clients=state.client_cache,
        )
        # Counted once an operation, however many times it runs (gateway.web.graphql).
        if self.rate_limit is not None and not request.scope.get(RATE_COUNTED):
            client = request.client.host if request.client else None
            await self.rate_limit.check(raw, subject_of(principal, client))
            request.scope[RATE_COUNTED] = True
        return Context.create(
            db=raw,
            sql=sql,
            principal=principal,
            request_id=request_id_of(request.scope),
            settings=self.settings,
            policy=state.policy_cache,
        )

    @staticmethod
    async def _flush_together(group_commit: GroupCommit, context: Context) -> None:
        """A read's events, durable before any of the data they describe is sent."""
        metrics.observe_decisions(
            context.audit.records, context.known_purposes, context.audit.written
        )
        began = time.perf_counter()
        written = await group_commit.write(context.audit)
        metrics.observe_audit_write(began, written + sum(context.audit.written.values()))

    @staticmethod
    async def _flush(context: Context) -> None:
        """The access events go in with the operation's other writes; the commit (or, for a
        read, the INSERT itself) makes them durable before any of the data they describe is
        sent."""
        metrics.observe_decisions(
            context.audit.records, context.known_purposes, context.audit.written
        )
        began = time.perf_counter()
        written = await context.audit.flush(context.db)
        metrics.observe_audit_write(began, written + sum(context.audit.written.values()))


def _cause(exc: BaseException) -> dict[str, Any]:
    return exception_summary(exc.__cause__) if exc.__cause__ is not None else {}


@asynccontextmanager
async def _connection(
    request: Request, via: Via
) -> AsyncIterator[tuple[Raw, AsyncConnection | None]]:
    """The operation's connection: the raw protocol always, SQLAlchemy's only off the raw pool."""
    if via is Via.ENGINE:
        async with db.engine_transaction(request.state.engine) as connection:
            yield await db.raw_of(connection), connection
    else:
        pool = request.state.raw_pool
        async with db.raw_operation(pool, transaction=via is Via.RAW_WRITE) as raw:
            yield raw, None
