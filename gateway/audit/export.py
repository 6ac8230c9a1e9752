"""Exporting the sealed access log as CSV or JSON Lines, streamed, with a signed manifest.

An export holds the sealed events of a time range up to one checkpoint, in position order, so the
same range and checkpoint always give the same bytes: the manifest (row count, SHA-256 of the body,
the covering checkpoint, signed) can be made beside the body and checked against it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.sealing import (
    EVENT_COLUMNS,
    Checkpoint,
    all_checkpoints,
    event_document,
    last_checkpoint,
)
from gateway.audit.verify import manifest_content
from gateway.errors import BadUserInput
from gateway.signing import Signer
from gateway.store import db

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
FETCH_ROWS = 2000
# How long one export may stream: the server's statement timeout and the client's deadline.
EXPORT_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True, slots=True)
class ExportRange:
    start: dt.datetime
    end: dt.datetime
    format: Format


def parse_time(raw: str | None, name: str) -> dt.datetime:
    if raw is None or not raw.strip():
        raise BadUserInput(f"`{name}` is required (ISO 8601 date or time).", argument=name)
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadUserInput(f"`{name}` is not an ISO 8601 date or time.", argument=name) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_range(start: str | None, end: str | None, fmt: str | None) -> ExportRange:
    """The range [from, to) and format, or BadUserInput saying what is wrong."""
    chosen = (fmt or "csv").lower()
    if chosen not in FORMATS:
        raise BadUserInput("`format` is csv or jsonl.", argument="format")
    begins, ends = parse_time(start, "from"), parse_time(end, "to")
    if ends <= begins:
        raise BadUserInput("`to` must be after `from`.", argument="to")
    return ExportRange(begins, ends, chosen)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSON Lines: one sorted JSON object per event, with its position and hash."""
    return "".join(
        json.dumps(
            {
                "position": row["position"],
                **event_document(row),
                "event_hash": row["event_hash"].hex(),
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        + "\n"
        for row in rows
    ).encode()


async def covering_checkpoint(
    connection: AsyncConnection, checkpoint_id: int | None = None
) -> Checkpoint:
    if checkpoint_id is None:
        checkpoint = await last_checkpoint(connection)
    else:
        checkpoint = next(
            (c for c in await all_checkpoints(connection) if c.id == checkpoint_id), None
        )
    if checkpoint is None:
        raise BadUserInput("No checkpoint covers the log yet; nothing sealed to export.")
    return checkpoint


async def sealed_rows(
    connection: AsyncConnection, export: ExportRange, checkpoint: Checkpoint
) -> AsyncIterator[list[dict[str, Any]]]:
    """The sealed events of the range up to the checkpoint, in position order, in chunks
    (a server-side cursor: memory stays flat whatever the range)."""
    columns = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
    result = await connection.stream(
        text(
            f"SELECT s.position, s.event_hash, {columns} FROM audit_seals s "  # noqa: S608  # constant columns
            "JOIN access_events e ON e.id = s.event_id "
            "WHERE s.occurred_at >= :start AND s.occurred_at < :end "
            "AND e.occurred_at >= :start AND e.occurred_at < :end "
            "AND s.position <= :last ORDER BY s.position"
        ).execution_options(yield_per=FETCH_ROWS),
        {"start": export.start, "end": export.end, "last": checkpoint.last_position},
    )
    async for partition in result.mappings().partitions(FETCH_ROWS):
        yield [dict(row) for row in partition]


async def count_rows(
    connection: AsyncConnection, export: ExportRange, checkpoint: Checkpoint
) -> int:
    value = await connection.scalar(
        text(
            "SELECT count(*) FROM audit_seals s WHERE s.occurred_at >= :start "
            "AND s.occurred_at < :end AND s.position <= :last"
        ),
        {"start": export.start, "end": export.end, "last": checkpoint.last_position},
    )
    return int(value or 0)


class Digest:
    """Counts and hashes an export's bytes as they go out."""

    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self.sha256.update(chunk)
        return chunk


# CSV injection: a spreadsheet runs a cell as a formula when it starts with =, +, - or @; some
# also take their fullwidth forms (what an East Asian input method types) for them, and some trim
# white space before them. Tab, CR and LF are defused whatever follows (OWASP's list).
_FORMULA_CHARACTERS = "=+-@\uff1d\uff0b\uff0d\uff20"
_ALWAYS_DEFUSED = "\t\r\n"
# White space as str.isspace has it (every such character is below U+10000).
_WHITE_SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_FORMULA_STARTS = tuple(_FORMULA_CHARACTERS)
_ALWAYS_DEFUSED_STARTS = tuple(_ALWAYS_DEFUSED)


def defuse_csv_cell(cell: str) -> str:
    """A cell for a CSV file that people open in spreadsheets, with a quote before it when a
    spreadsheet could run it as a formula (the quote makes it text). The one rule: `csv_cell_sql`
    is the same in SQL, for the exports PostgreSQL writes."""
    if cell.startswith(_ALWAYS_DEFUSED_STARTS) or cell.lstrip(_WHITE_SPACE).startswith(
        _FORMULA_STARTS
    ):
        return "'" + cell
    return cell


def _code_points(characters: str) -> str:
    return ", ".join(str(ord(c)) for c in dict.fromkeys(characters))


# The same rule in SQL, for exports written by PostgreSQL: first characters that decide alone, and
# the white space that needs a look further in (rare, so the common cell pays one `ascii`).
_DEFUSED_STARTS = _code_points(_ALWAYS_DEFUSED + _FORMULA_CHARACTERS)
_SUSPECT_STARTS = _code_points(_ALWAYS_DEFUSED + _FORMULA_CHARACTERS + _WHITE_SPACE)
_FORMULA_CODES = _code_points(_FORMULA_CHARACTERS)
_WHITE_SPACE_SQL = "E'" + "".join(f"\\u{ord(c):04x}" for c in _WHITE_SPACE) + "'"


def csv_cell_sql(expression: str) -> str:
    """SQL for one CSV cell, defused against spreadsheet formulas as `defuse_csv_cell` defuses
    it. (PostgreSQL text cannot hold NUL.) `ascii` reads the first character without making a
    string of it; only a cell starting with white space is trimmed to look further."""
    return (
        f"CASE WHEN ascii({expression}) NOT IN ({_SUSPECT_STARTS}) THEN {expression} "
        f"WHEN ascii({expression}) IN ({_DEFUSED_STARTS}) "
        f"OR ascii(ltrim({expression}, {_WHITE_SPACE_SQL})) IN ({_FORMULA_CODES}) "
        f"THEN chr(39) || {expression} ELSE {expression} END"
    )


def csv_list_cell_sql(array: str) -> str:
    """A text array as one defused cell, its elements joined by `;`. The joined text starts with
    the first element's first character when that element is not NULL, so the text is made once
    unless the first element is NULL (or the array empty) or starts like a formula; then the
    general rule decides on the joined text. The same bytes as `csv_cell_sql` of the join."""
    joined = f"array_to_string({array}, ';')"
    return (
        f"CASE WHEN ({array})[1] IS NOT NULL AND ascii(({array})[1]) NOT IN ({_SUSPECT_STARTS}) "
        f"THEN {joined} ELSE {csv_cell_sql(joined)} END"
    )


def csv_json_cell_sql(document: str) -> str:
    """A jsonb value as one defused cell. JSON text starts with {, [, ", a digit, -, t, f or n:
    only a number can start like a formula (a minus sign), so only numbers pay for the test.
    The same bytes as `csv_cell_sql` of the text."""
    as_text = f"{document}::text"
    return (
        f"CASE WHEN jsonb_typeof({document}) = 'number' THEN {csv_cell_sql(as_text)} "
        f"ELSE {as_text} END"
    )


_CSV_CELLS = {
    "position": "s.position::text",
    "id": "e.id::text",
    "occurred_at": "to_char(e.occurred_at AT TIME ZONE 'UTC', "
    '\'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')',
    "request_id": csv_cell_sql("e.request_id"),
    "operation": csv_cell_sql("e.operation"),
    "actor_kind": "e.actor_kind",
    "client_id": "e.client_id::text",
    "actor_member_id": "e.actor_member_id::text",
    "member_id": "e.member_id::text",
    "purpose": csv_cell_sql("e.purpose"),
    "legal_basis": "e.legal_basis",
    "outcome": "e.outcome",
    "fields_requested": csv_list_cell_sql("e.fields_requested"),
    "fields_released": csv_list_cell_sql("e.fields_released"),
    "fields_withheld": csv_json_cell_sql("e.fields_withheld"),
    "consent_ids": "array_to_string(e.consent_ids::text[], ';')",
    "details": csv_json_cell_sql("e.details"),
    "event_hash": "encode(s.event_hash, 'hex')",
}
# CSV straight from PostgreSQL (COPY ... TO STDOUT): the database writes the rows and the gateway
# only passes the bytes on (measured: the Python encoder was the export's bottleneck).
_COPY_CSV = (
    "SELECT "  # noqa: S608  # the cells above are this module's constants
    + ", ".join(f"{sql} AS {name}" for name, sql in _CSV_CELLS.items())
    + " FROM audit_seals s JOIN access_events e ON e.id = s.event_id "
    "WHERE s.occurred_at >= $1 AND s.occurred_at < $2 "
    "AND e.occurred_at >= $1 AND e.occurred_at < $2 AND s.position <= $3 ORDER BY s.position"
)
_QUEUE_CHUNKS = 16
# COPY arrives in pieces of about 10 kB (one network read each); they go out in pieces of this
# size, so the response path (queue, middleware, socket write) runs some 25 times less often.
_CHUNK_BYTES = 256 * 1024


async def _copy_csv(
    connection: AsyncConnection, export: ExportRange, checkpoint: Checkpoint
) -> AsyncIterator[bytes]:
    raw = await db.raw_of(connection)
    # A bounded queue between COPY and the response: memory stays flat whatever the range.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)

    pending = bytearray()

    async def sink(chunk: bytes) -> None:
        pending.extend(chunk)
        if len(pending) >= _CHUNK_BYTES:
            await queue.put(bytes(pending))
            pending.clear()

    async def copy() -> None:
        try:
            async with raw.locked() as driver:
                await driver.copy_from_query(
                    _COPY_CSV,
                    export.start,
                    export.end,
                    checkpoint.last_position,
                    output=sink,
                    format="csv",
                    header=True,
                    # The connection's client-side deadline is the request's statement timeout
                    # (seconds); an export may stream for minutes, as its SET LOCAL says.
                    timeout=EXPORT_TIMEOUT_SECONDS,
                )
            if pending:
                await queue.put(bytes(pending))
        finally:
            await queue.put(None)

    task = asyncio.create_task(copy())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def export_chunks(
    connection: AsyncConnection, export: ExportRange, checkpoint: Checkpoint
) -> AsyncIterator[bytes]:
    """The export's bytes in order: CSV from COPY, JSON Lines from a server-side cursor."""
    # An export may run for minutes: lift the request statement timeout for this transaction only.
    await connection.execute(
        text(f"SET LOCAL statement_timeout = '{int(EXPORT_TIMEOUT_SECONDS)}s'")
    )
    # The whole log's cell expressions cross PostgreSQL's JIT thresholds; compiling them (with
    # inlining and optimisation) cost more than it saved: measured 4.36 s without, 4.85 s with,
    # for a million rows.
    await connection.execute(text("SET LOCAL jit = off"))
    if export.format == "csv":
        async for chunk in _copy_csv(connection, export, checkpoint):
            yield chunk
        return
    async for rows in sealed_rows(connection, export, checkpoint):
        yield _jsonl(rows)


def manifest(
    digest: Digest, rows: int, export: ExportRange, checkpoint: Checkpoint, signer: Signer
) -> dict[str, Any]:
    """The signed manifest of an export's body."""
    document: dict[str, Any] = {
        "format": export.format,
        "from": export.start.isoformat(),
        "to": export.end.isoformat(),
        "rows": rows,
        "bytes": digest.size,
        "sha256": digest.sha256.hexdigest(),
        "checkpoint": checkpoint.summary(),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "key_id": signer.key_id,
    }
    document["signature"] = signer.sign(manifest_content(document)).hex()
    return document
