"""The `tillit` commands for the records Tillit keeps: consents, notices and enrichment imports."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.purposes import fetch_purposes
from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.cli.support import (
    emit,
    fail,
    in_transaction,
    out,
    parse_duration,
    row_progress,
    run_with_database,
)
from gateway.domain import AccessOutcome, LegalBasis, SystemPrincipal
from gateway.errors import BadUserInput
from gateway.records.cleansing import fetch_overdue_notices
from gateway.records.consent_changes import expire_lapsed_consent
from gateway.records.consents import fetch_expiring, fetch_lapsed
from gateway.records.csv_files import ImportFileError
from gateway.records.enrich_import import ImportReport, check_file, import_file
from gateway.records.enrichment import validate_source
from gateway.store.db import raw_of

consents_app = typer.Typer(help="Consents: renewals and expiry.", no_args_is_help=True)
notices_app = typer.Typer(help="Notices owed to members.", no_args_is_help=True)
enrich_app = typer.Typer(help="Enrichment from third parties.", no_args_is_help=True)

Format = Annotated[str, typer.Option("--format", help="table or csv.")]


def register(app: typer.Typer) -> None:
    app.add_typer(consents_app, name="consents")
    app.add_typer(notices_app, name="notices")
    app.add_typer(enrich_app, name="enrich")


@consents_app.command("expiring")
def consents_expiring(
    within: Annotated[str, typer.Option(help="Window, e.g. 30d, 2w, 3m.")] = "30d",
    fmt: Format = "table",
) -> None:
    """List members whose consent lapses within the window: the ones to ask for renewal."""
    now = dt.datetime.now(dt.UTC)
    window = parse_duration(within, now=now)
    expiring = run_with_database(
        in_transaction(lambda c: fetch_expiring(c, now=now, within=window))
    )
    rows = [
        [str(e.member_id), e.purpose, e.expires_at.isoformat(), str(e.consent_id)] for e in expiring
    ]
    emit(
        ["member_id", "purpose", "expires_at", "consent_id"],
        rows,
        fmt,
        f"{len(rows)} consents lapse within {within}",
    )


@consents_app.command("purge-expired")
def consents_purge_expired() -> None:
    """Close consents past their lifetime and delete the enriched values they alone covered.

    Run it daily (cron or a scheduler). Reads stop releasing at the expiry instant without it.
    """

    async def work(engine: AsyncEngine) -> tuple[int, int]:
        now = dt.datetime.now(dt.UTC)
        async with engine.connect() as connection:
            lapsed = await fetch_lapsed(connection, now=now)
            purposes = {
                p.key: p
                for p in await fetch_purposes(await raw_of(connection), include_retired=True)
            }
        closed = purged = 0
        request_id = f"purge-{uuid.uuid4().hex[:12]}"
        for item in lapsed:
            async with engine.begin() as connection:
                raw = await raw_of(connection)
                expiry = await expire_lapsed_consent(
                    raw,
                    member_id=item.member_id,
                    purpose=purposes[item.purpose],
                    purposes=purposes,
                )
                if expiry is None:
                    continue
                trail = AuditTrail(
                    request_id=request_id, principal=SystemPrincipal("purge"), now=now
                )
                trail.record(
                    AccessRecord(
                        operation="purgeExpired",
                        member_id=expiry.member_id,
                        purpose=expiry.purpose,
                        legal_basis=LegalBasis.CONSENT,
                        outcome=AccessOutcome.WRITTEN,
                        consent_ids=(expiry.event.id,),
                        details={"change": "EXPIRED", "purged": [f.value for f in expiry.purged]},
                    )
                )
                await trail.flush(raw)
            closed += 1
            purged += len(expiry.purged)
        return closed, purged

    closed, purged = run_with_database(work)
    out.print(f"closed {closed} expired consents; deleted {purged} enriched values")


@notices_app.command("overdue")
def notices_overdue(fmt: Format = "table") -> None:
    """List notices owed to members (information duty) that are past due and not delivered."""
    now = dt.datetime.now(dt.UTC)
    overdue = run_with_database(in_transaction(lambda c: fetch_overdue_notices(c, now=now)))
    rows = [[str(n.id), str(n.member_id), n.field or "", n.due_at.isoformat()] for n in overdue]
    emit(["notice_id", "member_id", "field", "due_at"], rows, fmt, f"{len(rows)} notices overdue")


@enrich_app.command("import")
def enrich_import(
    file: Annotated[Path, typer.Argument(help="The broker's CSV file (UTF-8, comma-separated).")],
    source: Annotated[str, typer.Option(help="Where the values come from (the broker).")],
    purpose: Annotated[str, typer.Option(help="The consent purpose the values are for.")],
    rejects: Annotated[
        Path | None, typer.Option(help="Where refused rows go (default: FILE.rejects.csv).")
    ] = None,
) -> None:
    """Import enriched values from a CSV, each row only on the member's valid consent."""
    try:
        origin = validate_source(source)
    except BadUserInput as exc:
        raise fail(exc.message) from None
    if not file.is_file():
        raise fail(f"{file}: no such file")
    try:
        header, total = check_file(file)
    except ImportFileError as exc:
        raise fail(f"{file}: {exc}; nothing was imported") from None
    reject_path = rejects or file.with_name(file.stem + ".rejects.csv")

    async def work(engine: AsyncEngine) -> ImportReport:
        async with engine.connect() as connection:
            purposes = {p.key: p for p in await fetch_purposes(await raw_of(connection))}
        declared = purposes.get(purpose)
        if declared is None:
            raise fail(f"unknown purpose {purpose!r}")
        with (
            reject_path.open("w", encoding="utf-8", newline="") as reject_file,
            row_progress(total) as advance,
        ):
            return await import_file(
                engine,
                file,
                source=origin,
                purpose=declared,
                rejects=reject_file,
                header=header,
                on_rows=advance,
            )

    report = run_with_database(work)
    out.print(f"rows: {report.rows}")
    out.print(f"accepted: {report.accepted} ({report.changed} members changed)")
    out.print(f"refused: {report.refused_total}")
    for code, count in sorted(report.refused.items()):
        out.print(f"  {code}: {count}")
    if report.refused_total:
        out.print(f"refused rows, with line and reason: {reject_path}")
