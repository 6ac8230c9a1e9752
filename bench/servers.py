"""The reference servers the benchmark runs beside Tillit, on the same database.

- raw:  a Starlette endpoint over asyncpg that answers the benchmark's GraphQL requests with one
        SELECT and `json` out; no GraphQL, no consent, no audit (the floor for a Python service).
- bare: a plain Strawberry schema with the same Member fields, parse and validation caching on,
        no consent, no audit.
- tillit-unaudited: Tillit itself, deciding and recording each read's access events as always,
        but dropping them where they would be written (the group commit; the set-based read's
        statement, made without its INSERT): no INSERT, nothing to seal. What Tillit would cost
        without its audit trail's writes, so that a run shows their price beside the rest
        (tillit/tillit-unaudited). Never a way to serve: a read it
        answers is not audited, which the fail-closed rule forbids.

raw and bare read the member and its enriched values in one statement and answer the same JSON
shape as Tillit, so a test can check that all three give the same data for a consenting member.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache

from gateway.audit.group_commit import GroupCommit
from gateway.audit.trail import AuditTrail
from gateway.records import set_reads

_with_events = set_reads.statement

# One statement: the member's base fields and its enriched values pivoted into columns.
MEMBER_SQL = """
SELECT m.id, m.tier, m.points, m.member_since,
       max(e.value #>> '{}') FILTER (WHERE e.field = 'income_band') AS income_band,
       max((e.value #>> '{}')::int) FILTER (WHERE e.field = 'household_size') AS household_size,
       max(e.value #>> '{}') FILTER (WHERE e.field = 'lifestyle_segment') AS lifestyle_segment
FROM members m LEFT JOIN enrichment_records e ON e.member_id = m.id
WHERE m.id = ANY($1::uuid[])
GROUP BY m.id
"""


def _dsn(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _member(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tier": row["tier"],
        "points": row["points"],
        "memberSince": row["member_since"].isoformat(),
        "incomeBand": row["income_band"],
        "householdSize": row["household_size"],
        "lifestyleSegment": row["lifestyle_segment"],
    }


async def fetch(pool: asyncpg.Pool, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = await pool.fetch(MEMBER_SQL, list(ids))
    return {str(row["id"]): _member(row) for row in rows}


def _pool_lifespan(url: str) -> Any:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        pool = await asyncpg.create_pool(_dsn(url), min_size=2, max_size=10)
        try:
            yield {"pool": pool}
        finally:
            await pool.close()

    return lifespan


def raw_app(url: str) -> Starlette:
    async def graphql(request: Request) -> Response:
        variables = json.loads(await request.body()).get("variables") or {}
        pool: asyncpg.Pool = request.state.pool
        if "ids" in variables:
            found = await fetch(pool, variables["ids"])
            data: dict[str, Any] = {"members": [found.get(i) for i in variables["ids"]]}
        else:
            found = await fetch(pool, [variables["id"]])
            data = {"member": found.get(variables["id"])}
        return Response(json.dumps({"data": data}), media_type="application/json")

    return Starlette(
        routes=[Route("/graphql", graphql, methods=["POST"])], lifespan=_pool_lifespan(url)
    )


@strawberry.type
class Member:
    id: strawberry.ID
    tier: str | None
    points: int | None
    member_since: dt.date | None
    income_band: str | None
    household_size: int | None
    lifestyle_segment: str | None


def _as_member(values: dict[str, Any] | None) -> Member | None:
    if values is None:
        return None
    return Member(
        id=strawberry.ID(values["id"]),
        tier=values["tier"],
        points=values["points"],
        member_since=dt.date.fromisoformat(values["memberSince"]),
        income_band=values["incomeBand"],
        household_size=values["householdSize"],
        lifestyle_segment=values["lifestyleSegment"],
    )


@strawberry.type
class Query:
    @strawberry.field
    async def member(self, info: strawberry.Info, id: strawberry.ID, purpose: str) -> Member | None:
        found = await fetch(info.context["request"].state.pool, [id])
        return _as_member(found.get(id))

    @strawberry.field
    async def members(
        self, info: strawberry.Info, ids: list[strawberry.ID], purpose: str
    ) -> list[Member | None]:
        found = await fetch(info.context["request"].state.pool, ids)
        return [_as_member(found.get(i)) for i in ids]


bare_schema = strawberry.Schema(
    query=Query,
    extensions=[lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256)],
)


def bare_app(url: str) -> Starlette:
    graphql = GraphQL(bare_schema, graphql_ide=None)
    return Starlette(
        routes=[Route("/graphql", graphql, methods=["POST"])], lifespan=_pool_lifespan(url)
    )


class _Dropping(GroupCommit):
    """A group commit that writes nothing: each read's events are counted and dropped."""

    async def write(self, trail: AuditTrail) -> int:
        count = len(trail.records)
        trail.records.clear()
        return count


def unaudited(app: Starlette) -> Starlette:
    """Tillit's app with its reads' access events dropped instead of written (see above): the
    group commit drops what it is handed, and the set-based read's statement is made without its
    INSERT (gateway.records.set_reads) while the app runs: in this process, so never beside a
    Tillit that serves (the benchmark runs it in a process of its own)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        async with inner(app) as state:
            assert state is not None  # gateway.app's lifespan yields its State
            set_reads.statement = functools.partial(_with_events, audited=False)
            try:
                yield {**state, "group_commit": _Dropping(state["raw_pool"])}
            finally:
                set_reads.statement = _with_events

    app.router.lifespan_context = lifespan
    return app


def unaudited_factory() -> Starlette:
    from gateway.app import create_app_from_environment

    return unaudited(create_app_from_environment())


def raw_factory() -> Starlette:
    return raw_app(os.environ["DATABASE_URL"])


def bare_factory() -> Starlette:
    return bare_app(os.environ["DATABASE_URL"])
