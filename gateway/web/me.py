"""GET /me (the self-service page) and GET /me/export (the member's data as a JSON download)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from gateway.web.boundary import Boundary, Refused, Via
from resolvers.me import export_my_data

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
