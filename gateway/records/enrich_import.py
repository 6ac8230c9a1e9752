"""Bulk enrichment import: a data broker's CSV, streamed, each row checked like recordEnrichment.

The file is read twice, a row at a time (constant memory whatever its size): first to refuse a file
that cannot be read as a whole (encoding, delimiter, header) before anything is written, then to
import it in batches, each in its own transaction. A bad row is written to the reject file with
its line and reason (its cells defused for the spreadsheet it is fixed in) and never stops the
rest. Values already stored as given are left alone, so importing the same file again changes
nothing.

Format: UTF-8, comma-separated, a header naming `member_id` and at least one of the enriched fields
(`income_band`, `household_size`, `lifestyle_segment`, `interests`; interests separated by `;`),
optionally `obtained_at` (ISO 8601 with a time zone). An empty cell means "not given".
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.domain import (
    AccessOutcome,
    EnrichedField,
    LegalBasis,
    MemberState,
    Purpose,
    SystemPrincipal,
)
from gateway.errors import BadUserInput
from gateway.records import csv_files
from gateway.records.consents import fetch_consent_states
from gateway.records.csv_files import ImportFileError, RejectFile, Row, batches
from gateway.records.enrichment import (
    EnrichmentRow,
    enrichment_refusal,
    upsert_values,
    validate_value,
)
from gateway.records.locks import Hold, lock_members
from gateway.records.members import fetch_members
from gateway.store.db import raw_of

BATCH_ROWS = 1000
MEMBER_COLUMN = "member_id"
OBTAINED_COLUMN = "obtained_at"
VALUE_COLUMNS = {f.value: f for f in EnrichedField}
ALLOWED_COLUMNS = {MEMBER_COLUMN, OBTAINED_COLUMN, *VALUE_COLUMNS}


@dataclass
class ImportReport:
    rows: int = 0
    accepted: int = 0  # rows whose values are stored (changed or already as given)
    changed: int = 0  # rows that changed stored values
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


def check_file(path: Path) -> tuple[list[str], int]:
    """The header and the number of data rows, or ImportFileError before anything is written."""
    return csv_files.check_file(path, _check_header)


def _check_header(header: list[str]) -> None:
    if MEMBER_COLUMN not in header:
        raise ImportFileError(1, f"missing column `{MEMBER_COLUMN}`")
    unknown = [name for name in header if name not in ALLOWED_COLUMNS]
    if unknown:
        raise ImportFileError(1, f"unknown column(s): {', '.join(unknown)}")
    if not any(name in VALUE_COLUMNS for name in header):
        known = ", ".join(VALUE_COLUMNS)
        raise ImportFileError(1, f"no value column; give one or more of {known}")


@dataclass(frozen=True, slots=True)
class _Parsed:
    row: Row
    member_id: uuid.UUID
    values: dict[EnrichedField, Any]
    obtained_at: dt.datetime | None


def _parse(row: Row, header: list[str]) -> _Parsed:
    if len(row.cells) != len(header):
        raise BadUserInput(f"expected {len(header)} fields, found {len(row.cells)}")
    cells = dict(zip(header, (cell.strip() for cell in row.cells), strict=True))
    try:
        member_id = uuid.UUID(cells[MEMBER_COLUMN])
    except ValueError:
        raise BadUserInput("member_id is not a UUID") from None
    values: dict[EnrichedField, Any] = {}
    for name, enriched in VALUE_COLUMNS.items():
        raw = cells.get(name, "")
        if not raw:
            continue
        if enriched is EnrichedField.HOUSEHOLD_SIZE:
            try:
                given: Any = int(raw)
            except ValueError:
                raise BadUserInput("household_size is not a whole number") from None
        elif enriched is EnrichedField.INTERESTS:
            given = [item for item in (part.strip() for part in raw.split(";")) if item]
        else:
            given = raw
        try:
            values[enriched] = validate_value(enriched, given)
        except BadUserInput as exc:
            raise BadUserInput(exc.message.replace("`", "")) from None
    if not values:
        raise BadUserInput("no values in this row")
    obtained = None
    if cells.get(OBTAINED_COLUMN):
        try:
            obtained = dt.datetime.fromisoformat(cells[OBTAINED_COLUMN])
        except ValueError:
            raise BadUserInput("obtained_at is not an ISO 8601 time") from None
        if obtained.tzinfo is None:
            raise BadUserInput("obtained_at needs a time zone")
    return _Parsed(row, member_id, values, obtained)


async def _lock_all(connection: AsyncConnection, members: list[uuid.UUID], purpose: str) -> None:
    # The lock order of every write path (gateway.records.locks): the members' rows first, in id
    # order, then the same advisory locks as grantConsent/withdrawConsent, in a fixed order, so
    # that neither two imports nor an import and a closing or erasure can deadlock: a withdrawal
    # waits for this batch and then purges what it wrote.
    await lock_members(await raw_of(connection), members, Hold.SHARE)
    keys = sorted({f"consent:{member_id}:{purpose}" for member_id in members})
    await connection.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
            "FROM unnest(CAST(:keys AS text[])) AS k"
        ),
        {"keys": keys},
    )


async def import_file(
    engine: AsyncEngine,
    path: Path,
    *,
    source: str,
    purpose: Purpose,
    rejects: TextIO,
    header: list[str],
    on_rows: Callable[[int], None] = lambda _: None,
) -> ImportReport:
    """Import a checked file (see check_file). Writes refused rows, with line and reason, to
    `rejects`; returns the counts."""
    if purpose.legal_basis is not LegalBasis.CONSENT:
        raise BadUserInput(f"Enrichment needs a consent purpose; {purpose.key} is not one.")
    report = ImportReport()
    reject_file = RejectFile(rejects, header)
    request_id = f"import-{uuid.uuid4().hex[:12]}"

    def refuse(row: Row, code: str, reason: str) -> None:
        report.refused[code] += 1
        reject_file.refuse(row, code, reason)

    for batch in batches(path, BATCH_ROWS):
        report.rows += len(batch)
        parsed: list[_Parsed] = []
        for row in batch:
            try:
                parsed.append(_parse(row, header))
            except BadUserInput as exc:
                refuse(row, "BAD_ROW", exc.message)
        now = dt.datetime.now(dt.UTC)
        trail = AuditTrail(
            request_id=request_id, principal=SystemPrincipal("enrich import"), now=now
        )
        async with engine.begin() as connection:
            members = [p.member_id for p in parsed]
            await _lock_all(connection, members, purpose.key)
            raw = await raw_of(connection)
            records = await fetch_members(raw, members)
            states = await fetch_consent_states(raw, list(records))
            accepted: list[tuple[_Parsed, uuid.UUID]] = []
            for item in parsed:
                record = records.get(item.member_id)
                if record is None:
                    refuse(item.row, "NOT_FOUND", "no member has this id")
                    continue
                state = MemberState(record.membership_active, states.get(item.member_id, {}))
                refusal, consent_id = enrichment_refusal(purpose, item.values, state, now)
                if refusal is not None:
                    refuse(item.row, refusal.code.value, refusal.message)
                    continue
                assert consent_id is not None
                accepted.append((item, consent_id))
            changed = await upsert_values(
                connection,
                [
                    EnrichmentRow(
                        item.member_id,
                        enriched,
                        value,
                        source,
                        item.obtained_at or now,
                        purpose.key,
                        consent_id,
                    )
                    for item, consent_id in accepted
                    for enriched, value in item.values.items()
                ],
                client_id=None,
            )
            written: dict[uuid.UUID, list[str]] = {}
            for member_id, enriched in changed:
                written.setdefault(member_id, []).append(enriched.value)
            consent_of = {item.member_id: consent_id for item, consent_id in accepted}
            for member_id, fields in written.items():
                trail.record(
                    AccessRecord(
                        operation="enrichImport",
                        member_id=member_id,
                        purpose=purpose.key,
                        legal_basis=LegalBasis.CONSENT,
                        outcome=AccessOutcome.WRITTEN,
                        fields_requested=tuple(sorted(fields)),
                        fields_released=tuple(sorted(fields)),
                        consent_ids=(consent_of[member_id],),
                        details={"source": source, "file": path.name[:100]},
                    )
                )
            await trail.flush(raw)
        report.accepted += len(accepted)
        report.changed += len({m for m, _ in changed})
        on_rows(len(batch))
    return report
