"""GET /audit/export and /audit/export/manifest: the sealed access log for auditors, streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.access.policy import require_auditor
from gateway.audit.export import (
    Digest,
    ExportRange,
    count_rows,
    covering_checkpoint,
    export_chunks,
    manifest,
    parse_range,
)
from gateway.audit.trail import AccessRecord
from gateway.domain import AccessOutcome
from gateway.errors import BadUserInput
from gateway.settings import Settings
from gateway.web.boundary import Boundary, Refused, Via

MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


async def _authorised_export(
    request: Request, operation: str
) -> tuple[ExportRange, int] | Response:
    """Check the caller and the range, and record the export before any of it is sent.

    Returns the range and the covering checkpoint's id, or the refusal's response (refusals are
    audited by the boundary).
    """
    params = request.query_params
    boundary: Boundary = request.state.boundary
    try:
        async with boundary.operation(request, via=Via.ENGINE, operation=operation) as context:
            require_auditor(context.principal, "export the access log")
            export = parse_range(params.get("from"), params.get("to"), params.get("format"))
            pinned = params.get("checkpoint")
            if pinned is not None and not pinned.isdigit():
                raise BadUserInput("`checkpoint` is a checkpoint id.", argument="checkpoint")
            checkpoint = await covering_checkpoint(context.sql, int(pinned) if pinned else None)
            context.audit.record(
                AccessRecord(
                    operation=operation,
                    member_id=None,
                    purpose=None,
                    legal_basis=None,
                    outcome=AccessOutcome.RELEASED,
                    details={
                        "from": export.start.isoformat(),
                        "to": export.end.isoformat(),
                        "format": export.format,
                        "checkpoint": checkpoint.id,
                    },
                )
            )
    except Refused as refused:
        return refused.response()
    return export, checkpoint.id


async def export(request: Request) -> Response:
    """The sealed events of [from, to) as CSV or JSON Lines, streamed in constant memory."""
    authorised = await _authorised_export(request, "auditExport")
    if isinstance(authorised, Response):
        return authorised
    export_range, checkpoint_id = authorised
    engine: AsyncEngine = request.state.engine

    async def body() -> AsyncIterator[bytes]:
        async with engine.connect() as connection:
            checkpoint = await covering_checkpoint(connection, checkpoint_id)
            async for chunk in export_chunks(connection, export_range, checkpoint):
                yield chunk

    filename = f"access-log-{export_range.start:%Y%m%d}-{export_range.end:%Y%m%d}"
    return StreamingResponse(
        body(),
        media_type=MEDIA[export_range.format],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}.{export_range.format}"',
            "X-Tillit-Checkpoint": str(checkpoint_id),
        },
    )


async def export_manifest(request: Request) -> Response:
    """The signed manifest of the export the same parameters give (row count, SHA-256, the
    covering checkpoint). Pass the checkpoint the export named (X-Tillit-Checkpoint) to match."""
    authorised = await _authorised_export(request, "auditExportManifest")
    if isinstance(authorised, Response):
        return authorised
    export_range, checkpoint_id = authorised
    engine: AsyncEngine = request.state.engine
    settings: Settings = request.state.settings
    digest = Digest()
    async with engine.connect() as connection:
        checkpoint = await covering_checkpoint(connection, checkpoint_id)
        rows = await count_rows(connection, export_range, checkpoint)
        async for chunk in export_chunks(connection, export_range, checkpoint):
            digest.update(chunk)
    document = manifest(digest, rows, export_range, checkpoint, settings.audit_signer)
    return JSONResponse(json.loads(json.dumps(document)))
