"""What the `tillit` commands share: consoles, errors, settings, the database, durations."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import typer
from dateutil.relativedelta import relativedelta
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.export import defuse_csv_cell
from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.domain import AccessOutcome, SystemPrincipal
from gateway.errors import DatabaseUnavailable, SettingsError, TillitError
from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings
from gateway.store import db
from gateway.store.db import Raw
from gateway.store.embedded import resolve_database_url

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc), code=2) from None
    configure_logging(settings.log_level, settings.effective_log_format)
    return settings


def database_url(settings: Settings) -> str:
    try:
        with db.translated():
            return resolve_database_url(settings)
    except DatabaseUnavailable:
        raise fail("cannot reach the database; check DATABASE_URL") from None


@asynccontextmanager
async def engine_for(settings: Settings, url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(url, settings, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


def run_with_database(
    work: Callable[[AsyncEngine], Awaitable[T]],
    *,
    settings: Settings | None = None,
    url: str | None = None,
) -> T:
    """Run `work` against the configured database (starting the embedded one if needed)."""
    settings = settings or settings_or_exit()
    url = url or database_url(settings)

    async def main() -> T:
        async with engine_for(settings, url) as engine:
            return await work(engine)

    try:
        with db.translated():
            return asyncio.run(main())
    except DatabaseUnavailable:
        raise fail("cannot reach the database; check DATABASE_URL") from None
    except TillitError as exc:
        raise fail(exc.message) from None


def in_transaction(
    work: Callable[[AsyncConnection], Awaitable[T]],
) -> Callable[[AsyncEngine], Awaitable[T]]:
    async def run(engine: AsyncEngine) -> T:
        async with engine.begin() as connection:
            return await work(connection)

    return run


_DURATION = re.compile(r"^(\d{1,5})([hdwmy])$")


def parse_duration(raw: str, *, now: dt.datetime) -> dt.timedelta:
    """`12h`, `30d`, `2w`, `6m` (months), `1y`, measured from `now`."""
    match = _DURATION.match(raw.strip().lower())
    if match is None:
        raise typer.BadParameter("use a number and a unit: h, d, w, m (months) or y, e.g. 30d")
    amount, unit = int(match.group(1)), match.group(2)
    step = {
        "h": relativedelta(hours=amount),
        "d": relativedelta(days=amount),
        "w": relativedelta(weeks=amount),
        "m": relativedelta(months=amount),
        "y": relativedelta(years=amount),
    }[unit]
    return (now + step) - now


def emit(columns: list[str], rows: list[list[str]], fmt: str, title: str) -> None:
    """Rows as a rich table, or as CSV on stdout (`--format csv`), its cells defused: such CSV is
    opened in spreadsheets, and a client's name or a purpose may start like a formula."""
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        for cells in [columns, *rows]:
            writer.writerow([defuse_csv_cell(cell) for cell in cells])
        return
    if fmt != "table":
        raise fail("--format is table or csv")
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@contextmanager
def row_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for an import of `total` rows; yields "advance by n"."""
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("rows", total=total)
        yield lambda n: progress.advance(task, n)


async def record_system_event(
    raw: Raw,
    operation: str,
    *,
    job: str,
    outcome: AccessOutcome,
    details: Mapping[str, Any],
) -> None:
    """An access event of a command that touches no member (reading the log, managing a
    client), in `raw`'s transaction."""
    trail = AuditTrail(
        request_id=f"{job}-{uuid.uuid4().hex[:12]}",
        principal=SystemPrincipal(job),
        now=dt.datetime.now(dt.UTC),
    )
    trail.record(
        AccessRecord(
            operation=operation,
            member_id=None,
            purpose=None,
            legal_basis=None,
            outcome=outcome,
            details=details,
        )
    )
    await trail.flush(raw)
