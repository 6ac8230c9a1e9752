"""GET /me (the self-service page) and GET /me/export (the member's data as a JSON download)."""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.auth import authenticate
from gateway.domain import ErrorCode
from gateway.errors import Forbidden, NotFound, Unauthenticated
from gateway.graphql_http import DATABASE_UNAVAILABLE, error_response
from gateway.logs import exception_summary
from gateway.middleware import request_id_of
from resolvers.context import Context
from resolvers.me import export_my_data

log = structlog.get_logger("tillit.me")
PAGE = Path(__file__).resolve().parent / "static" / "me.html"


async def me_page(request: Request) -> Response:
    """The self-service page: static HTML and a little JavaScript speaking GraphQL."""
    return HTMLResponse(
        PAGE.read_text(encoding="utf-8"),
        headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


async def me_export(request: Request) -> Response:
    """Everything about the calling member as one JSON document (member token only): the same
    export, and the same access event, as the `exportMyData` mutation."""
    engine: AsyncEngine = request.state.engine
    try:
        async with engine.begin() as connection:
            principal = await authenticate(
                connection,
                request.headers.get("authorization"),
                token_secret=request.state.token_keys,
            )
            context = Context.create(
                connection=connection,
                principal=principal,
                request_id=request_id_of(request.scope),
                settings=request.state.settings,
                policy=request.state.policy_cache,
            )
            try:
                document = await export_my_data(context)
            except (Forbidden, NotFound) as refused:
                # The refusal is audited (own_record recorded it) and answered in HTTP terms.
                await context.audit.flush(connection)
                status = 404 if isinstance(refused, NotFound) else 403
                return error_response(status, refused.code, refused.message)
            await context.audit.flush(connection)
    except Unauthenticated as exc:
        return error_response(
            401, exc.code, exc.message, **{"WWW-Authenticate": 'Bearer realm="tillit"'}
        )
    except DATABASE_UNAVAILABLE as exc:
        log.error("me.export_unavailable", **exception_summary(exc))
        return error_response(
            503, ErrorCode.AUDIT_UNAVAILABLE, "The export could not be recorded; try again."
        )
    return JSONResponse(
        document,
        headers={
            "Content-Disposition": f'attachment; filename="my-data-{context.now:%Y%m%d}.json"',
            "Cache-Control": "no-store",
        },
    )
