"""GET /me (the self-service page) and GET /me/export (the member's data as a JSON download)."""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.web.boundary import Boundary, Refused, Via
from resolvers.me import export_my_data

PAGE = Path(__file__).resolve().parent / "static" / "me.html"
# Where the page's own <script> tags take this response's nonce.
NONCE_SLOT = "{{csp-nonce}}"
_PAGE_TEXT = PAGE.read_text(encoding="utf-8")


async def me_page(request: Request) -> Response:
    """The self-service page: static HTML and a little JavaScript speaking GraphQL.

    Only scripts that carry this response's nonce run, so markup that ever got into the page
    (a value shown without escaping) could not run script of its own."""
    nonce = secrets.token_urlsafe(18)
    return HTMLResponse(
        _PAGE_TEXT.replace(NONCE_SLOT, nonce),
        headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"script-src 'nonce-{nonce}'; base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            # A stored copy would hand out the same nonce again.
            "Cache-Control": "no-store",
        },
    )


async def me_export(request: Request) -> Response:
    """Everything about the calling member as one JSON document (member token only): the same
    export, and the same access event, as the `exportMyData` mutation."""
    boundary: Boundary = request.state.boundary
    try:
        async with boundary.operation(request, via=Via.ENGINE, operation="exportMyData") as context:
            document = await export_my_data(context)
    except Refused as refused:
        return refused.response()
    return JSONResponse(
        document,
        headers={
            "Content-Disposition": f'attachment; filename="my-data-{context.now:%Y%m%d}.json"',
            "Cache-Control": "no-store",
        },
    )
