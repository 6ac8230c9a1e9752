"""The composition root: routes, middleware, and the lifespan that owns the database engine."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry import Schema

from gateway.access.auth import TokenKeys
from gateway.access.caches import POLICY_TTL_SECONDS, TtlCache
from gateway.audit.group_commit import GroupCommit
from gateway.audit.sealer import run_sealer
from gateway.domain import ClientPrincipal, ErrorCode, Purpose
from gateway.errors import SettingsError
from gateway.logs import configure_logging, flush_logs
from gateway.settings import Settings, load_settings
from gateway.store import db, migrate
from gateway.store.connect import Connector
from gateway.web import audience_export, metrics
from gateway.web.audit_export import export, export_manifest
from gateway.web.boundary import Boundary, error_body
from gateway.web.graphql import GraphQLEndpoint
from gateway.web.me import me_export, me_page
from gateway.web.middleware import RequestContextMiddleware
from gateway.web.ratelimit import RateLimiter, public_limiter
from gateway.web.readiness import readyz
from gateway.web.transparency import ROUTES as TRANSPARENCY_ROUTES

log = structlog.get_logger("tillit.app")


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    raw_pool: asyncpg.Pool
    group_commit: GroupCommit
    head_revision: str
    token_keys: TokenKeys
    client_cache: TtlCache[str, ClientPrincipal]
    policy_cache: TtlCache[str, dict[str, Purpose]]
    boundary: Boundary
    public_rate_limit: RateLimiter | None
    connect: Connector


async def healthz(request: Request) -> Response:
    """Alive: the process answers. Says nothing about the database."""
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_REQUEST
    message = "No such route." if exc.status_code == 404 else str(exc.detail)
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


def _cors(settings: Settings) -> list[Middleware]:
    """Starlette's CORS middleware for the allowed origins; none (and no cost) without them."""
    if not settings.cors_origin_list:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Tillit-Checkpoint", "Retry-After"],
            max_age=600,
        )
    ]


def create_app(
    settings: Settings,
    *,
    database_url: str | None = None,
    schema: Schema | None = None,
) -> Starlette:
    """Build the ASGI app. The engine is made in the lifespan, not here: nothing connects yet."""
    url = database_url or (
        settings.database_url.get_secret_value() if settings.database_url else None
    )
    if url is None:
        raise SettingsError("No database: set DATABASE_URL, or start through `tillit serve`.")
    if schema is None:
        from schema import schema as default_schema

        schema = default_schema
    graphql = GraphQLEndpoint(schema, settings)
    boundary = Boundary.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        token_keys = TokenKeys.from_settings(settings)
        engine = db.create_engine(url, settings)
        raw_pool = await db.create_raw_pool(url, settings)
        metrics.watch_pools(engine, raw_pool)
        group_commit = GroupCommit(raw_pool)
        stop = asyncio.Event()
        sealer = (
            asyncio.create_task(
                run_sealer(
                    engine,
                    settings.audit_signer,
                    interval=settings.seal_interval_seconds,
                    stop=stop,
                    standby=settings.sealer == "standby",
                )
            )
            if settings.seal_interval_seconds > 0
            else None
        )
        public = public_limiter(settings)
        syncing = [
            asyncio.create_task(limiter.run_sync(raw_pool, stop))
            for limiter in (boundary.rate_limit, public)
            if limiter is not None
        ]
        try:
            yield {
                "settings": settings,
                "engine": engine,
                # For the hot operations: reads and consent changes (see gateway.web.graphql).
                "raw_pool": raw_pool,
                # The access events of concurrent reads, written together.
                "group_commit": group_commit,
                "head_revision": migrate.head_revision(),
                # Every route that reads or changes member data runs through it.
                "boundary": boundary,
                # The public routes' buckets, one per client address (gateway.web.transparency).
                "public_rate_limit": public,
                "token_keys": token_keys,
                "client_cache": TtlCache(POLICY_TTL_SECONDS),
                "policy_cache": TtlCache(POLICY_TTL_SECONDS),
                # A connection of its own, for a stream that outlives a request's deadline
                # (gateway.web.audience_export).
                "connect": db.connector(url, settings),
            }
        finally:
            stop.set()
            await group_commit.close()
            if sealer is not None:
                await sealer
            for task in syncing:
                await task
            await raw_pool.close()
            await engine.dispose()
            log.info("gateway.stopped")
            # A worker process ends by its signal's default action: nothing after this runs.
            flush_logs()

    return Starlette(
        debug=False,
        routes=[
            Route("/graphql", graphql.post, methods=["POST"]),
            Route("/graphql", graphql.ide, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
            Route("/me", me_page, methods=["GET"]),
            Route("/me/export", me_export, methods=["GET"]),
            Route("/audit/export", export, methods=["GET"]),
            Route("/audit/export/manifest", export_manifest, methods=["GET"]),
            Route("/audiences/export", audience_export.export, methods=["GET"]),
            Route("/audiences/export/manifest", audience_export.manifest, methods=["GET"]),
            *(
                Route(path, endpoint, methods=methods)
                for path, endpoint, methods in TRANSPARENCY_ROUTES
            ),
        ],
        middleware=[Middleware(RequestContextMiddleware), *_cors(settings)],
        # An unexpected exception is answered and logged by RequestContextMiddleware, which
        # knows the request id.
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


def create_app_from_environment() -> Starlette:
    """Factory for `uvicorn --factory` and worker processes: settings from the environment."""
    settings = load_settings()
    configure_logging(
        settings.log_level,
        settings.effective_log_format,
        buffered=settings.effective_log_format == "json",
    )
    app = create_app(settings)
    tune_garbage_collector()
    return app


# Young-generation collections after this many net container allocations (CPython's is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """For a serving process, once what it loaded at start (schema, modules, routes) exists.

    Measured on a hundred-member read: the cyclic collector took about 1 ms of each request's
    7.8 ms of CPU, most of it full collections walking everything loaded at start. Frozen, those
    objects are left out of every collection (they live as long as the process anyway), and the
    young generation, which a request fills with short-lived dicts that reference counting frees,
    is collected less often. With both the collector's share fell below 0.01 ms. Not done by
    `create_app`, so a test process that builds many apps keeps the default collector.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
