"""`tillit audience export`: a purpose's audience (or what changed since an earlier export) to a
file, with its signed manifest beside it; the same export as GET /audiences/export, by Tillit
itself (the access events name the system, not a client)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.purposes import fetch_purposes
from gateway.audit.trail import AuditTrail
from gateway.cli.support import database_url, err, fail, out, run_with_database, settings_or_exit
from gateway.domain import ActorKind, SystemPrincipal
from gateway.errors import BadUserInput, Refused, TillitError
from gateway.records import audience_export as exports
from gateway.records.audiences import Selection, refuse_outside
from gateway.store import db
from gateway.store.db import raw_of

audience_app = typer.Typer(help="Audiences for campaign tools.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(audience_app, name="audience")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@audience_app.command("export")
def export(
    purpose_key: Annotated[str, typer.Option("--purpose", help="The purpose the audience is for.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the export.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    where: Annotated[
        str | None,
        typer.Option(help='The selection, as JSON (e.g. \'{"tier": ["GOLD"]}\').'),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="The cursor of an earlier export's manifest: only what changed since."),
    ] = None,
) -> None:
    """Export the members a purpose may reach now (`upsert` lines), or with --since what changed
    since an earlier export, with `suppress` lines for members to remove. One access event per
    member, committed before the member's line is written."""
    settings = settings_or_exit()
    url = database_url(settings)
    try:
        chosen = exports.parse_format(fmt)
        selection = Selection.from_document(orjson.loads(where)) if where else Selection()
        cursor = exports.parse_cursor(since)
    except orjson.JSONDecodeError:
        raise fail("--where is a JSON object", code=2) from None
    except BadUserInput as exc:
        raise fail(exc.message, code=2) from None

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        request_id = f"cli-{uuid.uuid4().hex[:12]}"
        async with engine.begin() as connection:
            raw = await raw_of(connection)
            purposes = {p.key: p for p in await fetch_purposes(raw)}
            purpose = purposes.get(purpose_key)
            if purpose is None:
                raise TillitError(f"no purpose {purpose_key!r} is in force")
            try:
                refuse_outside(purpose, selection)
            except Refused as exc:
                raise TillitError(exc.message) from None
            started = await exports.begin(
                raw,
                purpose=purpose,
                selection=selection,
                fmt=chosen,
                actor=exports.Actor(ActorKind.SYSTEM, None, request_id),
                since=cursor,
                now=_now(),
                window=dt.timedelta(days=settings.audience_sync_days),
            )
            trail = AuditTrail(
                request_id=request_id, principal=SystemPrincipal("cli"), now=started.started_at
            )
            trail.record(exports.start_record(started))
            await trail.flush(raw)
        driver = await db.connector(url, settings)()
        try:
            raw = db.Raw(driver)
            with out_file.open("wb") as handle:
                async for chunk in exports.lines(raw, started, clock=_now):
                    handle.write(chunk)
            return await exports.finish(raw, started, settings.audit_signer, now=_now())
        finally:
            await driver.close()

    try:
        document = run_with_database(work, settings=settings, url=url)
    except asyncio.CancelledError:
        raise fail("interrupted; the export is unfinished and has no manifest") from None
    manifest_path = out_file.with_name(out_file.name + ".manifest.json")
    manifest_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    out.print(
        f"{document['upserts']} to have and {document['suppressions']} to remove, to "
        f"{out_file}; manifest {manifest_path}; next --since {document['cursor']}",
        highlight=False,
    )
    err.print("Every member written is in the access log under operation audienceExport.")


@audience_app.command("prune")
def prune() -> None:
    """Forget the member changes no sync can ask for any more: those older than every export
    begun within TILLIT_AUDIENCE_SYNC_DAYS (a sync from an older export is refused). Run it
    daily."""
    settings = settings_or_exit()
    window = dt.timedelta(days=settings.audience_sync_days)

    async def work(engine: AsyncEngine) -> int:
        async with engine.begin() as connection:
            return await exports.prune_changes(await raw_of(connection), window=window, now=_now())

    gone = run_with_database(work, settings=settings)
    out.print(
        f"forgot {gone} member changes older than every export of the last "
        f"{settings.audience_sync_days} days",
        highlight=False,
    )
