"""The `tillit audit` commands (keys, seal, verify, retention, export) and `tillit report`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.export import (
    Digest,
    count_rows,
    covering_checkpoint,
    export_chunks,
    manifest,
    parse_range,
    parse_time,
)
from gateway.audit.log import transparency_report
from gateway.audit.report import render
from gateway.audit.retention import RetentionRefused, drop_before, month_start
from gateway.audit.sealer import seal_through_now
from gateway.audit.sealing import Checkpoint
from gateway.audit.verify import VerifyReport, verify_export, verify_log
from gateway.cli import transparency
from gateway.cli.support import (
    err,
    fail,
    out,
    parse_duration,
    record_system_event,
    run_with_database,
    settings_or_exit,
)
from gateway.domain import AccessOutcome
from gateway.errors import BadUserInput, TillitError
from gateway.signing import Signer
from gateway.store.db import raw_of

audit_app = typer.Typer(
    help="The audit trail: seal, verify, export, retention.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
    app.command("report")(report)
    transparency.register(audit_app)


async def _record(engine: AsyncEngine, operation: str, details: dict[str, object]) -> None:
    """Reading the log from the command line is an access event too, committed first."""
    async with engine.begin() as connection:
        await record_system_event(
            await raw_of(connection),
            operation,
            job="cli",
            outcome=AccessOutcome.RELEASED,
            details=details,
        )


@audit_app.command("keygen")
def keygen() -> None:
    """Make a new Ed25519 signing key for checkpoints and manifests."""
    signer, seed = Signer.generate()
    out.print(f"TILLIT_AUDIT_SIGNING_KEY={seed}", highlight=False)
    out.print(f"TILLIT_AUDIT_VERIFY_KEY={signer.verifier.public_base64}", highlight=False)
    err.print("Keep the signing key outside the database; give auditors the verify key.")


@audit_app.command("seal")
def seal(
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for a running gateway's sealer to seal up to now, when one "
            "holds the sealer lock.",
            min=0,
        ),
    ] = 60.0,
) -> None:
    """Seal everything committed before now and write a checkpoint (the gateway does this every
    interval). While a gateway's sealer runs, wait for it to pass now instead, then exit 0."""
    settings = settings_or_exit()

    async def through_now(engine: AsyncEngine) -> list[Checkpoint]:
        try:
            return await asyncio.wait_for(seal_through_now(engine, settings.audit_signer), wait)
        except TimeoutError:
            raise TillitError(
                f"the running sealer did not seal up to now within {wait:g} s; is it behind? "
                "(see tillit_audit_unsealed_events)"
            ) from None

    written = run_with_database(through_now, settings=settings)
    sealed = sum(c.event_count for c in written)
    last = written[-1] if written else None
    where = (
        f"checkpoint {last.id} at position {last.last_position}" if last else "no new checkpoint"
    )
    out.print(f"sealed {sealed} events up to now; {where}")


def _print_report(report: VerifyReport) -> None:
    if report.ok:
        out.print(
            f"OK: {report.checkpoints} checkpoints, {report.events} events verified"
            + (f", {report.dropped} dropped by retention" if report.dropped else "")
            + (f", {report.unsealed} not sealed yet" if report.unsealed else ""),
            highlight=False,
        )
    else:
        err.print(f"[red]FAILED:[/red] {report.problems[0]}", highlight=False)


@audit_app.command("verify")
def verify(
    export: Annotated[
        Path | None, typer.Option(help="Verify this export file instead of the database.")
    ] = None,
    manifest_file: Annotated[
        Path | None,
        typer.Option("--manifest", help="The export's manifest (default FILE.manifest.json)."),
    ] = None,
    max_age: Annotated[
        float,
        typer.Option(
            help="Warn (and exit 2) when the newest checkpoint is older than this many seconds: "
            "no sealer is running. 0: do not check.",
            min=0,
        ),
    ] = 60.0,
    remote: Annotated[
        str | None,
        typer.Option(
            help="Verify the export against this gateway's published keys, checkpoints and "
            "proofs (its base URL), with no database access.",
        ),
    ] = None,
    log_key: transparency.LogKeys = None,
) -> None:
    """Recompute the trail (or an export) and report OK or the first thing that does not match.

    Exit codes: 0 verified, 1 a problem (named), 2 verified but the newest checkpoint is stale."""
    if remote is not None:
        if export is None:
            raise fail("--remote verifies an export: give --export FILE", code=2)
        manifest = manifest_file or export.with_name(export.name + ".manifest.json")
        transparency.verify_remote(remote, export, manifest, log_key)
        return
    settings = settings_or_exit()
    if export is not None:
        report = verify_export(
            export,
            manifest_file or export.with_name(export.name + ".manifest.json"),
            settings.audit_verifiers,
        )
    else:

        async def work(engine: AsyncEngine) -> VerifyReport:
            async with engine.connect() as connection:
                return await verify_log(connection, settings.audit_verifiers)

        report = run_with_database(work, settings=settings)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(1)
    if max_age and report.newest_age is not None and report.newest_age > max_age:
        err.print(
            f"[yellow]WARNING:[/yellow] the newest checkpoint is {report.newest_age:.0f} s old "
            f"(more than --max-age {max_age:g}): no sealer has written one since; "
            f"{report.unsealed} events wait unsealed",
            highlight=False,
        )
        raise typer.Exit(2)


@audit_app.command("retention")
def retention(
    older_than: Annotated[str, typer.Option(help="Age, e.g. 60m (months) or 5y.")],
) -> None:
    """Drop whole monthly partitions older than the age, and checkpoint what was dropped.
    Needs the tables' owner (the migration role), not the gateway's role."""
    settings = settings_or_exit()
    now = dt.datetime.now(dt.UTC)
    cutoff = month_start(now - parse_duration(older_than, now=now))

    async def work(engine: AsyncEngine) -> str:
        try:
            async with engine.begin() as connection:
                dropped, checkpoint = await drop_before(
                    connection, settings.audit_signer, cutoff=cutoff
                )
        except RetentionRefused as exc:
            raise fail(str(exc)) from None
        if not dropped:
            return f"nothing older than {cutoff}"
        assert checkpoint is not None
        names = ", ".join(f"{d.partition} ({d.events} events)" for d in dropped)
        return f"dropped {names}; checkpoint {checkpoint.id}"

    out.print(run_with_database(work, settings=settings))


@audit_app.command("export")
def export(
    start: Annotated[str, typer.Option("--from", help="Start (ISO 8601), inclusive.")],
    end: Annotated[str, typer.Option("--to", help="End (ISO 8601), exclusive.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the export.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
) -> None:
    """Export the sealed access log of a period, with a signed manifest beside it."""
    settings = settings_or_exit()
    try:
        export_range = parse_range(start, end, fmt)
    except BadUserInput as exc:
        raise fail(exc.message, code=2) from None

    async def work(engine: AsyncEngine) -> dict[str, object]:
        digest = Digest()
        await _record(
            engine,
            "auditExport",
            {
                "from": export_range.start.isoformat(),
                "to": export_range.end.isoformat(),
                "format": export_range.format,
            },
        )
        async with engine.connect() as connection:
            checkpoint = await covering_checkpoint(connection)
            total = await count_rows(connection, export_range, checkpoint)
            with (
                out_file.open("wb") as handle,
                Progress(
                    TextColumn("exporting"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                ) as progress,
            ):
                task = progress.add_task("rows", total=total)
                async for chunk in export_chunks(connection, export_range, checkpoint):
                    handle.write(digest.update(chunk))
                    progress.advance(task, chunk.count(b"\n"))
        return manifest(digest, total, export_range, checkpoint, settings.audit_signer)

    document = run_with_database(work, settings=settings)
    manifest_path = out_file.with_name(out_file.name + ".manifest.json")
    manifest_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    out.print(f"{document['rows']} rows to {out_file}; manifest {manifest_path}", highlight=False)


def report(
    start: Annotated[str, typer.Option("--from", help="Start (ISO 8601), inclusive.")],
    end: Annotated[str, typer.Option("--to", help="End (ISO 8601), exclusive.")],
    out_file: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
) -> None:
    """Write the transparency report of a period as one self-contained HTML page."""
    settings = settings_or_exit()
    try:
        begins, ends = parse_time(start, "from"), parse_time(end, "to")
    except BadUserInput as exc:
        raise fail(exc.message, code=2) from None
    if ends <= begins:
        raise fail("--to must be after --from", code=2)

    async def work(engine: AsyncEngine) -> str:
        await _record(
            engine,
            "transparencyReport",
            {
                "from": begins.isoformat(),
                "to": ends.isoformat(),
            },
        )
        async with engine.connect() as connection:
            data = await transparency_report(connection, start=begins, end=ends)
        return render(data, controller=settings.controller_name)

    out_file.write_text(run_with_database(work, settings=settings), encoding="utf-8")
    out.print(f"report written to {out_file}", highlight=False)
