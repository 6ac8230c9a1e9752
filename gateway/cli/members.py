"""`tillit members`: move an existing register in, erase a member (the data-protection
officer's Art. 17 request), and delete erased members' evidence once its keeping period ends."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.purposes import fetch_purposes
from gateway.audit.trail import AuditTrail
from gateway.cli.support import fail, out, row_progress, run_with_database, settings_or_exit
from gateway.domain import ActorKind, LegalBasis, SystemPrincipal
from gateway.errors import TillitError
from gateway.records.csv_files import ImportFileError
from gateway.records.lifecycle import ErasureRecord, erase_member, purge_erased_evidence
from gateway.records.member_import import MemberImportReport, check_file, import_members
from gateway.store.db import raw_of
from resolvers.lifecycle import erasure_record

members_app = typer.Typer(help="Members: import a register, erase, purge.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(members_app, name="members")


@members_app.command("import")
def members_import(
    file: Annotated[Path, typer.Argument(help="The member register (UTF-8 CSV).")],
    rejects: Annotated[
        Path | None, typer.Option(help="Where refused rows go (default: FILE.rejects.csv).")
    ] = None,
    contract: Annotated[
        str, typer.Option(help="The contract purpose the members are held under.")
    ] = "membership_service",
) -> None:
    """Import an existing member register with its consents and their evidence. Rows whose
    email is a member already change nothing, so running it twice is safe."""
    if not file.is_file():
        raise fail(f"{file}: no such file")
    reject_path = rejects or file.with_name(file.stem + ".rejects.csv")

    async def work(engine: AsyncEngine) -> tuple[MemberImportReport, float]:
        async with engine.connect() as connection:
            purposes = {p.key: p for p in await fetch_purposes(await raw_of(connection))}
        held_under = purposes.get(contract)
        if held_under is None or held_under.legal_basis is not LegalBasis.CONTRACT:
            raise fail(f"{contract!r} is not a contract purpose")
        try:
            header, total = check_file(file, purposes)
        except ImportFileError as exc:
            raise fail(f"{file}: {exc}; nothing was imported") from None
        started = dt.datetime.now(dt.UTC)
        with (
            reject_path.open("w", encoding="utf-8", newline="") as reject_file,
            row_progress(total) as advance,
        ):
            report = await import_members(
                engine,
                file,
                purposes=purposes,
                contract=held_under,
                rejects=reject_file,
                header=header,
                on_rows=advance,
            )
        return report, (dt.datetime.now(dt.UTC) - started).total_seconds()

    report, seconds = run_with_database(work)
    out.print(f"rows: {report.rows}")
    out.print(f"imported: {report.imported} members, {report.consents} consents")
    out.print(f"already members (unchanged): {report.existing}")
    out.print(f"refused: {report.refused_total}")
    for code, count in sorted(report.refused.items()):
        out.print(f"  {code}: {count}")
    if report.refused_total:
        out.print(f"refused rows, with line and reason: {reject_path}")
    if seconds > 0:
        out.print(f"{report.rows / seconds:,.0f} rows/s")


def print_erasure(erasure: ErasureRecord) -> None:
    out.print(f"erased member {erasure.member_id}", highlight=False)
    out.print(f"  erasure receipt: {erasure.receipt_id}", highlight=False)
    for what, count in sorted(erasure.deleted.items()):
        out.print(f"  {what}: {count}", highlight=False)
    out.print(
        f"  kept: {erasure.consent_events_kept} consent events (the evidence of past consents, "
        f"under the member id only) until {erasure.evidence_kept_until:%Y-%m-%d}; the access log",
        highlight=False,
    )


@members_app.command("erase")
def members_erase(
    member_id: Annotated[str, typer.Argument(help="The member's id (UUID).")],
    yes: Annotated[bool, typer.Option("--yes", help="Erase without asking.")] = False,
) -> None:
    """Erase a member (GDPR Art. 17), for the data-protection officer. Cannot be undone."""
    try:
        subject = uuid.UUID(member_id)
    except ValueError:
        raise fail("a member id is a UUID") from None
    if not yes:
        typer.confirm(
            f"Erase member {subject}? Their profile and data are deleted for good", abort=True
        )
    settings = settings_or_exit()

    async def work(engine: AsyncEngine) -> ErasureRecord:
        now = dt.datetime.now(dt.UTC)
        async with engine.begin() as connection:
            raw = await raw_of(connection)
            purposes = {p.key: p for p in await fetch_purposes(raw)}
            erasure = await erase_member(
                raw,
                member_id=subject,
                requested_by=ActorKind.SYSTEM,
                purposes=purposes,
                evidence_period=dt.timedelta(days=settings.erasure_evidence_days),
                now=now,
            )
            trail = AuditTrail(
                request_id=f"erase-{uuid.uuid4().hex[:12]}",
                principal=SystemPrincipal("members erase"),
                now=now,
            )
            trail.record(erasure_record("membersErase", erasure))
            await trail.flush(raw)
        return erasure

    try:
        erasure = run_with_database(work)
    except TillitError as exc:
        raise fail(exc.message) from None
    print_erasure(erasure)


@members_app.command("purge-erased")
def members_purge_erased() -> None:
    """Delete the consent evidence of erased members whose keeping period has ended. Run it
    daily (cron or a scheduler), like `consents purge-expired`."""

    async def work(engine: AsyncEngine) -> tuple[int, int]:
        async with engine.begin() as connection:
            return await purge_erased_evidence(
                await raw_of(connection), now=dt.datetime.now(dt.UTC)
            )

    members, events = run_with_database(work)
    out.print(f"deleted the evidence of {members} erased members ({events} consent events)")
