"""GET /me (the self-service page) and GET /me/export (the member's data as a JSON download)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.audit import AccessRecord, AuditTrail
from gateway.auth import Anonymous, MemberPrincipal, authenticate
from gateway.domain import AccessOutcome, ErrorCode, LegalBasis
from gateway.errors import Unauthenticated
from gateway.graphql_http import DATABASE_UNAVAILABLE, error_response
from gateway.logs import exception_summary
from gateway.member_data import export_document, fetch_member
from gateway.middleware import request_id_of
from gateway.purposes import fetch_purposes

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
    """Everything about the calling member as one JSON document (member token only)."""
    engine: AsyncEngine = request.state.engine
    now = dt.datetime.now(dt.UTC)
    try:
        async with engine.begin() as connection:
            principal = await authenticate(
                connection,
                request.headers.get("authorization"),
                token_secret=request.state.token_keys,
            )
            trail = AuditTrail(
                request_id=request_id_of(request.scope), principal=principal, now=now
            )
            if isinstance(principal, Anonymous):
                raise Unauthenticated()
            if not isinstance(principal, MemberPrincipal):
                trail.record(
                    AccessRecord(
                        operation="exportMyData",
                        member_id=None,
                        purpose=None,
                        legal_basis=None,
                        outcome=AccessOutcome.DENIED,
                        details={"reason": "FORBIDDEN"},
                    )
                )
                await trail.flush(connection)
                return error_response(403, ErrorCode.FORBIDDEN, "The export is for members.")
            member = await fetch_member(connection, principal.member_id)
            if member is None:
                trail.record(
                    AccessRecord(
                        operation="exportMyData",
                        member_id=principal.member_id,
                        purpose=None,
                        legal_basis=None,
                        outcome=AccessOutcome.NOT_FOUND,
                    )
                )
                await trail.flush(connection)
                return error_response(
                    404, ErrorCode.NOT_FOUND, "This token's member does not exist."
                )
            document = await export_document(
                connection, member, purposes=await fetch_purposes(connection), now=now
            )
            trail.record(
                AccessRecord(
                    operation="exportMyData",
                    member_id=member.id,
                    purpose=None,
                    legal_basis=LegalBasis.LEGAL_OBLIGATION,
                    outcome=AccessOutcome.RELEASED,
                    details={"format": document["format"]},
                )
            )
            await trail.flush(connection)
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
            "Content-Disposition": f'attachment; filename="my-data-{now:%Y%m%d}.json"',
            "Cache-Control": "no-store",
        },
    )
