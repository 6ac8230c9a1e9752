"""The access log and the transparency report, for auditors. Reading them is audited too."""

from __future__ import annotations

import datetime as dt
import uuid

from gateway.access.policy import require_auditor
from gateway.audit.log import LogFilter, LogPage, TransparencyReport, fetch_page
from gateway.audit.log import transparency_report as build_report
from gateway.audit.trail import AccessRecord
from gateway.domain import AccessOutcome
from gateway.errors import BadUserInput, TillitError
from resolvers.context import Context


def _auditor_only(context: Context, operation: str, member_id: uuid.UUID | None) -> None:
    """Refuse anyone but an auditor, and record the refusal as an event like any other."""
    try:
        require_auditor(context.principal)
    except TillitError as error:
        context.audit.refused(operation=operation, member_id=member_id, code=error.code)
        raise


async def access_log(
    context: Context, *, where: LogFilter, first: int, after: str | None
) -> LogPage:
    _auditor_only(context, "accessLog", where.member_id)
    page = await fetch_page(context.sql, where, first=first, after=after)
    context.audit.record(
        AccessRecord(
            operation="accessLog",
            member_id=where.member_id,
            purpose=None,
            legal_basis=None,
            outcome=AccessOutcome.RELEASED,
            details={
                "filter": {
                    "member_id": str(where.member_id) if where.member_id else None,
                    "client_id": str(where.client_id) if where.client_id else None,
                    "purpose": where.purpose,
                    "outcome": where.outcome.value if where.outcome else None,
                    "from": where.start.isoformat() if where.start else None,
                    "to": where.end.isoformat() if where.end else None,
                    "request_id": where.request_id,
                    "operation": where.operation,
                    "acting_member_id": (
                        str(where.acting_member_id) if where.acting_member_id else None
                    ),
                },
                "returned": len(page.entries),
            },
        )
    )
    return page


async def transparency_report(
    context: Context, *, start: dt.datetime, end: dt.datetime
) -> TransparencyReport:
    _auditor_only(context, "transparencyReport", None)
    if end <= start:
        raise BadUserInput("`to` must be after `from`.", argument="to")
    report = await build_report(context.sql, start=start, end=end)
    context.audit.record(
        AccessRecord(
            operation="transparencyReport",
            member_id=None,
            purpose=None,
            legal_basis=None,
            outcome=AccessOutcome.RELEASED,
            details={"from": start.isoformat(), "to": end.isoformat()},
        )
    )
    return report


def parse_optional_uuid(raw: str | None, argument: str) -> uuid.UUID | None:
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadUserInput(f"`{argument}` is a UUID.", argument=argument) from None
