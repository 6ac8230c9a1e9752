"""`me`: a member's own data, all of it, and what was done with it. Reading it is audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from gateway.audit.log import LogPage
from gateway.audit.trail import AccessRecord
from gateway.audit.transparency import with_seals
from gateway.domain import AccessOutcome, Anonymous, ClientPrincipal, LegalBasis, MemberPrincipal
from gateway.errors import Forbidden, NotFound, Unauthenticated
from gateway.records.consents import ConsentEventRecord, fetch_consent_states
from gateway.records.lifecycle import ProfileChangeRecord, fetch_profile_changes
from gateway.records.locks import Hold, lock_member
from gateway.records.member_data import (
    Notice,
    ObjectionEntry,
    export_document,
    fetch_access_history,
    fetch_consent_history,
    fetch_enriched,
    fetch_member,
    fetch_notices,
    fetch_objections,
)
from gateway.records.members import EnrichedValue, MemberRecord, fetch_address_corrections
from resolvers import lifecycle
from resolvers.consents import ReceiptView
from resolvers.context import Context
from resolvers.members import AddressView, ConsentStatusView, consent_statuses


async def own_record(context: Context, operation: str) -> MemberRecord:
    """The calling member's record: member tokens only, for a member that exists."""
    principal = context.principal
    if isinstance(principal, Anonymous):
        raise Unauthenticated()
    if not isinstance(principal, MemberPrincipal):
        raise context.refused(
            operation,
            Forbidden(
                "`me` is for members, with a member token; clients read members through `member`."
                if isinstance(principal, ClientPrincipal)
                else "`me` is for members."
            ),
        )
    # Held until the operation ends (gateway.records.locks): an erasure waits for this read
    # (which may mark notices delivered), or this read waits for it and finds no member.
    held = await lock_member(context.db, principal.member_id, Hold.SHARE)
    record = await fetch_member(context.db, principal.member_id) if held else None
    if record is None:
        raise context.refused(operation, NotFound("This token's member does not exist."))
    return record


async def me(context: Context, *, parts: Iterable[str]) -> MemberRecord:
    record = await own_record(context, "me")
    context.audit.record(
        AccessRecord(
            operation="me",
            member_id=record.id,
            # The right of access (GDPR Art. 15): the controller must answer it.
            purpose=None,
            legal_basis=LegalBasis.LEGAL_OBLIGATION,
            outcome=AccessOutcome.RELEASED,
            fields_requested=tuple(sorted(parts)),
            fields_released=tuple(sorted(parts)),
        )
    )
    return record


async def address(context: Context, record: MemberRecord) -> AddressView:
    corrections = (await fetch_address_corrections(context.db, [record.id])).get(record.id, [])
    a = record.address
    return AddressView(a.street, a.postal_code, a.city, a.country, corrections)


async def enriched(context: Context, member_id: uuid.UUID) -> list[EnrichedValue]:
    return await fetch_enriched(context.db, member_id)


async def consents(context: Context, member_id: uuid.UUID) -> list[ConsentStatusView]:
    states = (await fetch_consent_states(context.db, [member_id])).get(member_id, {})
    return consent_statuses(await context.purposes(), states, context.now)


async def consent_history(context: Context, member_id: uuid.UUID) -> list[ConsentEventRecord]:
    return await fetch_consent_history(context.sql, member_id)


async def notices(context: Context, member_id: uuid.UUID) -> list[Notice]:
    """Reading the notices delivers them: the information duty is met."""
    return await fetch_notices(context.sql, member_id, deliver=True, now=context.now)


async def objections(context: Context, member_id: uuid.UUID) -> list[ObjectionEntry]:
    return await fetch_objections(context.sql, member_id)


async def profile_changes(context: Context, member_id: uuid.UUID) -> list[ProfileChangeRecord]:
    return await fetch_profile_changes(context.db, member_id)


async def consent_receipt(
    context: Context, member_id: uuid.UUID, receipt_id: str
) -> ReceiptView | None:
    receipt = await lifecycle.consent_receipt(context, member_id, receipt_id)
    if receipt is None:
        raise NotFound("You have no consent receipt with this id.", argument="id")
    return receipt


async def access_history(
    context: Context,
    member_id: uuid.UUID,
    *,
    first: int,
    after: str | None,
    by_the_member: bool | None = None,
    proofs_at: int | None = None,
) -> LogPage:
    """The member's access history; with `proofs_at`, each sealed entry with its inclusion
    proof in the signed tree of that size (the /me page checks them in the browser)."""
    page = await fetch_access_history(
        context.sql, member_id, first=first, after=after, by_the_member=by_the_member
    )
    if proofs_at is None:
        return page
    context.spend_proofs(len(page.entries))
    entries = await with_seals(context.db, page.entries, proofs_at, reader=member_id)
    return LogPage(entries, has_next_page=page.has_next_page)


async def export_my_data(context: Context) -> dict[str, Any]:
    record = await own_record(context, "exportMyData")
    document = await export_document(
        context.sql,
        record,
        purposes=list((await context.purposes()).values()),
        now=context.now,
    )
    context.audit.record(
        AccessRecord(
            operation="exportMyData",
            member_id=record.id,
            purpose=None,
            legal_basis=LegalBasis.LEGAL_OBLIGATION,
            outcome=AccessOutcome.RELEASED,
            details={"format": document["format"]},
        )
    )
    return document
