"""GET /audiences/export and /audiences/export/manifest: a purpose's audience (or what changed
since an earlier export) for a campaign tool, streamed, audited per member, with a signed manifest.

The request is authorised and recorded through the operation boundary (refusals audited there);
the lines stream from a connection of their own (gateway.records.audience_export), each batch's
access events committed before its lines leave. The first batch is written before the response
starts, so an audit trail that cannot be written answers 503 AUDIT_UNAVAILABLE instead of a
stream; a later failure ends the stream unfinished, and an export without a manifest cannot be
the `since` of a sync.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.access.policy import audience_purpose, require_audience_client
from gateway.audit.trail import AccessRecord
from gateway.domain import AccessOutcome, ActorKind, ClientPrincipal, ErrorCode
from gateway.errors import AuditUnavailable, BadUserInput, NotFound
from gateway.records import audience_export as exports
from gateway.records.audiences import Selection, refuse_outside
from gateway.settings import Settings
from gateway.store import db
from gateway.store.connect import Connector
from gateway.web.boundary import Boundary, Refused, Via, error_body

log = structlog.get_logger()
MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
MAX_WHERE_BYTES = 8192


def _where(raw: str | None) -> Selection:
    if raw is None or not raw.strip():
        return Selection()
    if len(raw) > MAX_WHERE_BYTES:
        raise BadUserInput(f"`where` is at most {MAX_WHERE_BYTES} bytes.", argument="where")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadUserInput("`where` is a JSON object.", argument="where") from None
    if not isinstance(document, dict):
        raise BadUserInput("`where` is a JSON object.", argument="where")
    return Selection.from_document(document)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def export(request: Request) -> Response:
    """The audience of `purpose` (selected by `where`), or with `since` what changed since that
    export: `upsert` lines for members to have, `suppress` lines for members to remove."""
    params = request.query_params
    boundary: Boundary = request.state.boundary
    try:
        async with boundary.operation(request, via=Via.ENGINE, operation="audienceExport") as ctx:
            purpose = audience_purpose(
                ctx.principal, params.get("purpose") or "", await ctx.purposes()
            )
            assert isinstance(ctx.principal, ClientPrincipal)
            fmt = exports.parse_format(params.get("format"))
            selection = _where(params.get("where"))
            refuse_outside(purpose, selection)
            since = exports.parse_cursor(params.get("since"))
            started = await exports.begin(
                ctx.db,
                purpose=purpose,
                selection=selection,
                fmt=fmt,
                actor=exports.Actor(ActorKind.CLIENT, ctx.principal.id, ctx.request_id),
                since=since,
                now=ctx.now,
                window=dt.timedelta(days=ctx.settings.audience_sync_days),
            )
            ctx.audit.record(exports.start_record(started))
    except Refused as refused:
        return refused.response()
    return await stream(request, started)


async def stream(request: Request, started: exports.Export) -> Response:
    """The export's body from a connection of its own; its first batch before the response."""
    settings: Settings = request.state.settings
    connect: Connector = request.state.connect
    driver = await connect()
    raw = db.Raw(driver)
    body = exports.lines(raw, started, clock=_now)
    first: list[bytes] = []
    try:
        first.append(await anext(body))  # the header
        first.append(await anext(body, b""))  # the first batch, committed
    except Exception as exc:  # any failure: nothing of the audience leaves
        await body.aclose()
        await driver.close()
        log.error("audience_export.unavailable", error=type(exc).__name__)
        failure = AuditUnavailable()
        return JSONResponse(
            error_body(ErrorCode.AUDIT_UNAVAILABLE, failure.message), status_code=503
        )

    async def rest() -> AsyncIterator[bytes]:
        try:
            for chunk in first:
                if chunk:
                    yield chunk
            async for chunk in body:
                yield chunk
            await exports.finish(raw, started, settings.audit_signer, now=_now())
        finally:
            await body.aclose()
            await driver.close()

    name = f"audience-{started.purpose.key}-{started.started_at:%Y%m%dT%H%M%SZ}"
    return StreamingResponse(
        rest(),
        media_type=MEDIA[started.format],
        headers={
            "Content-Disposition": f'attachment; filename="{name}.{started.format}"',
            "X-Tillit-Export": str(started.id),
        },
    )


async def manifest(request: Request) -> Response:
    """The signed manifest of a finished export of the caller's (its `cursor` is the next
    sync's `since`)."""
    boundary: Boundary = request.state.boundary
    raw_id = request.query_params.get("export") or ""
    try:
        async with boundary.operation(
            request, via=Via.ENGINE, operation="audienceExportManifest"
        ) as ctx:
            principal = require_audience_client(ctx.principal)
            try:
                export_id = uuid.UUID(raw_id)
            except ValueError:
                raise BadUserInput(
                    "`export` is the X-Tillit-Export of an export.", argument="export"
                ) from None
            document = await exports.stored_manifest(ctx.db, export_id, principal.id)
            if document is None:
                raise NotFound("No finished export of this client has this id.", argument="export")
            ctx.audit.record(
                AccessRecord(
                    operation="audienceExportManifest",
                    member_id=None,
                    purpose=document.get("purpose"),
                    legal_basis=None,
                    outcome=AccessOutcome.RELEASED,
                    details={"export": str(export_id)},
                )
            )
    except Refused as refused:
        return refused.response()
    return JSONResponse(dict(document))
