"""Moving a club in: an existing member register (CSV), streamed in batches, every row checked.

Like the enrichment import (gateway.records.enrich_import), the file is read twice, a row at a
time: first to refuse a file that cannot be read as a whole before anything is written, then to
import it in batches of BATCH_ROWS rows, each batch in one transaction with its access events.
A bad row goes to the reject file with its line, code and reason, and never stops the rest; its
cells are defused (gateway.records.csv_files.RejectFile), since the file is fixed in a spreadsheet.

Format: UTF-8, comma-separated, a header with
  first_name, last_name, email                     required
  phone, street, postal_code, city, country        optional, checked as updateMember checks them
  tier, points, member_since, terms_version,       optional
  external_subject
and, per consent purpose P, the four columns of its consent (all four, or none for that row):
  P.method            EXPLICIT or CONDITIONAL (at least what the purpose needs)
  P.notice_version    a notice version the policy accepts for P
  P.granted_at        ISO 8601 with a time zone, not in the future
  P.evidence_sha256   SHA-256 of the wording the member was shown
A consent without its evidence is refused, never guessed. A row whose email is already a member
changes nothing and is counted as `existing`, so importing the same file twice changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.trail import AccessRecord, AuditTrail
from gateway.domain import (
    AccessOutcome,
    ConsentMethod,
    ErrorCode,
    LegalBasis,
    ProfileField,
    Purpose,
    SystemPrincipal,
    Tier,
)
from gateway.errors import BadUserInput
from gateway.records import csv_files
from gateway.records.csv_files import ImportFileError, RejectFile, Row, batches
from gateway.records.lifecycle import check_external_subject
from gateway.records.profile import REQUIRED, check_changes, unsafe_text
from gateway.store.db import raw_of

BATCH_ROWS = 1000
PROFILE_COLUMNS = {f.value: f for f in ProfileField}
OTHER_COLUMNS = ("tier", "points", "member_since", "terms_version", "external_subject")
CONSENT_PARTS = ("method", "notice_version", "granted_at", "evidence_sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class MemberImportReport:
    rows: int = 0
    imported: int = 0
    existing: int = 0  # rows whose email is a member already: nothing changed
    consents: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


def check_header(header: list[str], purposes: Mapping[str, Purpose]) -> list[str]:
    """Refuse a header that cannot be imported; returns the consent purposes it names."""
    missing = [f.value for f in REQUIRED if f.value not in header]
    if missing:
        raise ImportFileError(1, f"missing column(s): {', '.join(sorted(missing))}")
    consent_purposes: dict[str, set[str]] = {}
    for name in header:
        if name in PROFILE_COLUMNS or name in OTHER_COLUMNS:
            continue
        key, _, part = name.partition(".")
        if part not in CONSENT_PARTS:
            raise ImportFileError(1, f"unknown column {name!r}")
        purpose = purposes.get(key)
        if purpose is None or purpose.legal_basis is not LegalBasis.CONSENT:
            raise ImportFileError(1, f"column {name!r}: {key!r} is not a consent purpose")
        consent_purposes.setdefault(key, set()).add(part)
    for key, parts in consent_purposes.items():
        if parts != set(CONSENT_PARTS):
            absent = ", ".join(f"{key}.{p}" for p in CONSENT_PARTS if p not in parts)
            raise ImportFileError(1, f"consent columns of {key} incomplete: add {absent}")
    return sorted(consent_purposes)


def check_file(path: Path, purposes: Mapping[str, Purpose]) -> tuple[list[str], int]:
    """The header and the number of data rows, or ImportFileError before anything is written."""
    return csv_files.check_file(path, lambda header: check_header(header, purposes))


@dataclass(frozen=True, slots=True)
class _Consent:
    purpose: str
    method: ConsentMethod
    notice_version: str
    granted_at: dt.datetime
    expires_at: dt.datetime
    evidence_sha256: str


@dataclass(frozen=True, slots=True)
class _Member:
    row: Row
    fields: dict[ProfileField, str | None]
    tier: str
    points: int
    member_since: dt.date | None
    terms_version: str | None
    external_subject: str | None
    consents: tuple[_Consent, ...]


class _Refused(Exception):
    """A row that is well-formed but may not be imported; the code goes to the reject file."""

    def __init__(self, code: ErrorCode | str, reason: str) -> None:
        self.code = str(code)
        self.message = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class _Rejected:
    """Why a row is refused, as a worker process sends it back (exceptions do not pickle)."""

    code: str
    message: str


def _consent(key: str, cells: Mapping[str, str], purpose: Purpose, now: dt.datetime) -> _Consent:
    method_text = cells[f"{key}.method"].upper()
    if method_text not in ConsentMethod.__members__:
        raise BadUserInput(f"{key}.method is EXPLICIT or CONDITIONAL")
    method = ConsentMethod(method_text)
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    if not method.satisfies(required):
        raise _Refused(
            ErrorCode.CONSENT_METHOD_INSUFFICIENT, f"{key} needs {required.value.lower()} consent"
        )
    notice = cells[f"{key}.notice_version"]
    if notice not in purpose.accepted_notice_versions:
        raise _Refused(
            ErrorCode.NOTICE_OUTDATED, f"{key}: notice {notice!r} is not one the policy accepts"
        )
    try:
        granted_at = dt.datetime.fromisoformat(cells[f"{key}.granted_at"])
    except ValueError:
        raise BadUserInput(f"{key}.granted_at is not an ISO 8601 time") from None
    if granted_at.tzinfo is None:
        raise BadUserInput(f"{key}.granted_at needs a time zone")
    if granted_at > now:
        raise BadUserInput(f"{key}.granted_at is in the future")
    digest = cells[f"{key}.evidence_sha256"].lower()
    if not digest:
        raise _Refused(
            "EVIDENCE_MISSING", f"{key}: no evidence (the wording's SHA-256); not imported"
        )
    if not _SHA256.match(digest):
        raise BadUserInput(f"{key}.evidence_sha256 is not a SHA-256 hex digest")
    assert purpose.consent_lifetime is not None
    return _Consent(key, method, notice, granted_at, granted_at + purpose.consent_lifetime, digest)


def _parse_batch(
    batch: list[Row],
    header: list[str],
    consent_keys: list[str],
    purposes: Mapping[str, Purpose],
    now: dt.datetime,
) -> list[_Member | _Rejected]:
    """Each row checked (in a worker process): the member, or why the row is refused."""
    results: list[_Member | _Rejected] = []
    for row in batch:
        try:
            results.append(_parse(row, header, consent_keys, purposes, now))
        except BadUserInput as exc:
            results.append(_Rejected("BAD_ROW", exc.message))
        except _Refused as exc:
            results.append(_Rejected(exc.code, exc.message))
    return results


def _parse(
    row: Row,
    header: list[str],
    consent_keys: list[str],
    purposes: Mapping[str, Purpose],
    now: dt.datetime,
) -> _Member:
    if len(row.cells) != len(header):
        raise BadUserInput(f"expected {len(header)} fields, found {len(row.cells)}")
    given_cells = dict(zip(header, row.cells, strict=True))
    cells = {name: cell.strip() for name, cell in given_cells.items()}
    # The profile fields as given, untrimmed: checked as updateMember checks its arguments, so
    # that a separator at a cell's edge is refused as the API refuses it, not trimmed away.
    given = {
        f: (given_cells[name] if cells[name] else None)
        for name, f in PROFILE_COLUMNS.items()
        if name in cells
    }
    for required in REQUIRED:
        if not given.get(required):
            raise BadUserInput(f"{required.value} is empty")
    try:
        fields = check_changes(given, {})
    except BadUserInput as exc:
        raise BadUserInput(exc.message.replace("`", "")) from None
    tier = (cells.get("tier") or Tier.BASIC.value).upper()
    if tier not in Tier.__members__:
        raise BadUserInput("tier is BASIC, SILVER, GOLD or PLATINUM")
    try:
        points = int(cells.get("points") or 0)
    except ValueError:
        raise BadUserInput("points is not a whole number") from None
    if points < 0:
        raise BadUserInput("points is negative")
    since = None
    if cells.get("member_since"):
        try:
            since = dt.date.fromisoformat(cells["member_since"])
        except ValueError:
            raise BadUserInput("member_since is not a date (YYYY-MM-DD)") from None
        if since > now.date():
            raise BadUserInput("member_since is in the future")
    terms = cells.get("terms_version") or None
    if terms is not None and len(terms) > 32:
        raise BadUserInput("terms_version is longer than 32 characters")
    for name in ("terms_version", "external_subject"):
        if unsafe_text(given_cells.get(name, "")):
            raise BadUserInput(f"{name} holds control characters or line separators")
    try:
        subject = check_external_subject(cells.get("external_subject") or None)
    except BadUserInput:
        raise BadUserInput("external_subject is 1 to 255 printable characters") from None
    consents = []
    for key in consent_keys:
        parts = [cells[f"{key}.{part}"] for part in CONSENT_PARTS]
        if not any(parts):
            continue
        consents.append(_consent(key, cells, purposes[key], now))
    return _Member(row, fields, tier, points, since, terms, subject, tuple(consents))


_INSERT_MEMBERS = """
INSERT INTO members (first_name, last_name, email, phone, street, postal_code, city, country,
                     tier, points, member_since, terms_version, external_subject)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::int[], $11::date[], $12::text[],
                     $13::text[])
ON CONFLICT DO NOTHING
RETURNING id, email
"""
# The consent history as the register kept it, each grant with its evidence's digest; recorded
# by the system (the import), on the channel the file names.
_INSERT_CONSENTS = """
INSERT INTO consent_events (member_id, purpose_key, kind, method, notice_version, channel,
                            actor_kind, evidence_sha256, occurred_at, expires_at)
SELECT m, p, 'GRANTED', method, notice, $7, 'SYSTEM', digest, at, expires
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $8::timestamptz[]) AS c(m, p, method, notice, digest, at, expires)
RETURNING id, member_id
"""


async def import_members(
    engine: AsyncEngine,
    path: Path,
    *,
    purposes: Mapping[str, Purpose],
    contract: Purpose,
    rejects: TextIO,
    header: list[str],
    on_rows: Callable[[int], None] = lambda _: None,
) -> MemberImportReport:
    """Import a checked file (see check_file); refused rows go to `rejects` with line and
    reason. Each batch is one transaction: its members, their consents and their access events."""
    consent_keys = check_header(header, purposes)
    report = MemberImportReport()
    reject_file = RejectFile(rejects, header)
    request_id = f"members-import-{uuid.uuid4().hex[:12]}"
    channel = f"import:{path.name}"[:64]
    seen: dict[str, int] = {}

    def refuse(row: Row, code: str, reason: str) -> None:
        report.refused[code] += 1
        reject_file.refuse(row, code, reason)

    async def _write_batch(batch: list[Row], results: list[_Member | _Rejected]) -> None:
        report.rows += len(batch)
        now = dt.datetime.now(dt.UTC)
        parsed: list[_Member] = []
        for row, member in zip(batch, results, strict=True):
            if isinstance(member, _Rejected):
                refuse(row, member.code, member.message)
                continue
            email = str(member.fields[ProfileField.EMAIL]).lower()
            if email in seen:
                refuse(row, "DUPLICATE", f"the same email as line {seen[email]}")
                continue
            seen[email] = row.line
            parsed.append(member)
        trail = AuditTrail(
            request_id=request_id, principal=SystemPrincipal("members import"), now=now
        )
        # In address order: two imports at once with addresses in common wait for each other
        # on the unique index in one order, never deadlock.
        parsed.sort(key=_email)
        async with engine.begin() as connection:
            raw = await raw_of(connection)

            inserted = await raw.fetch(
                _INSERT_MEMBERS,
                *([m.fields.get(f) for m in parsed] for f in ProfileField),
                [m.tier for m in parsed],
                [m.points for m in parsed],
                [m.member_since or now.date() for m in parsed],
                [m.terms_version for m in parsed],
                [m.external_subject for m in parsed],
            )
            ids = {row["email"].lower(): row["id"] for row in inserted}
            new = [(ids[_email(m)], m) for m in parsed if _email(m) in ids]
            skipped = [m for m in parsed if _email(m) not in ids]
            members = {
                row["e"]
                for row in await raw.fetch(
                    "SELECT lower(email) AS e FROM members WHERE lower(email) = ANY($1::text[])",
                    [_email(m) for m in skipped],
                )
            }
            for m in skipped:
                if _email(m) not in members:
                    # Not the email: the external subject is another member's.
                    refuse(m.row, "ALREADY_MEMBER", "external_subject is linked to another member")
            grants = [(member_id, c) for member_id, m in new for c in m.consents]
            consent_ids: dict[uuid.UUID, list[uuid.UUID]] = {}
            if grants:
                for row in await raw.fetch(
                    _INSERT_CONSENTS,
                    [g[0] for g in grants],
                    [g[1].purpose for g in grants],
                    [g[1].method.value for g in grants],
                    [g[1].notice_version for g in grants],
                    [g[1].evidence_sha256 for g in grants],
                    [g[1].granted_at for g in grants],
                    channel,
                    [g[1].expires_at for g in grants],
                ):
                    consent_ids.setdefault(row["member_id"], []).append(row["id"])
            for member_id, member in new:
                trail.record(
                    AccessRecord(
                        operation="membersImport",
                        member_id=member_id,
                        purpose=contract.key,
                        legal_basis=LegalBasis.CONTRACT,
                        outcome=AccessOutcome.WRITTEN,
                        fields_requested=tuple(
                            sorted(f.value for f, v in member.fields.items() if v is not None)
                        ),
                        consent_ids=tuple(consent_ids.get(member_id, ())),
                        details={"file": path.name[:100], "line": member.row.line},
                    )
                )
            await trail.flush(raw)
        report.imported += len(new)
        report.existing += sum(1 for m in skipped if _email(m) in members)
        report.consents += len(grants)
        on_rows(len(batch))

    loop = asyncio.get_running_loop()
    # Checking rows (email, phone and postal-code rules) is most of an import's CPU: it runs in
    # worker processes, the next batches while this process writes the current one.
    workers = max(1, min(os.cpu_count() or 1, 4))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[list[Row], asyncio.Future[list[_Member | _Rejected]]]] = deque()
        reader = iter(batches(path, BATCH_ROWS))

        def submit() -> None:
            batch = next(reader, None)
            if batch is not None:
                at = dt.datetime.now(dt.UTC)
                job = loop.run_in_executor(
                    pool, _parse_batch, batch, header, consent_keys, purposes, at
                )
                pending.append((batch, job))

        for _ in range(workers + 1):
            submit()
        while pending:
            batch, job = pending.popleft()
            results = await job
            submit()
            await _write_batch(batch, results)
    return report


def _email(member: _Member) -> str:
    return str(member.fields[ProfileField.EMAIL]).lower()
