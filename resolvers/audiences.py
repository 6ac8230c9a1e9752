"""Audience pages: the members a purpose may reach now, selected on what it releases, audited.

The statement (gateway.records.audiences) takes only members for whom the purpose's legal basis
holds at the operation's moment; this module settles the caller and the arguments, releases the
fields the purpose covers, and records one access event per member on the page.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.access.policy import Decision, audience_purpose, decide
from gateway.audit.trail import AccessRecord
from gateway.domain import (
    AccessOutcome,
    Category,
    ConsentEventKind,
    ConsentMethod,
    ConsentState,
    ErrorCode,
    MemberState,
    Purpose,
)
from gateway.errors import BadUserInput, Refused, TillitError
from gateway.records.audiences import Selection, audience_page, outside, refuse_outside
from gateway.records.members import Correction, fetch_address_corrections, fetch_bundles
from resolvers.context import Context
from resolvers.members import MemberView, released_values

OPERATION = "audience"
# A cursor is base64url of this prefix and a member id: versioned, so that its form can change
# without an old cursor being read as a new one.
_CURSOR_PREFIX = "audience/1:"
_CURSOR_MAX = 100  # characters; a cursor this module gives out is 64


def encode_cursor(member_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{member_id}".encode()).decode()


def decode_cursor(cursor: str) -> uuid.UUID:
    """The member id a cursor of `encode_cursor` holds; BadUserInput for anything else."""
    bad = BadUserInput("`after` is not a cursor an audience page gave out.", argument="after")
    if len(cursor) > _CURSOR_MAX:
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        if not text.startswith(_CURSOR_PREFIX):
            raise bad
        member_id = uuid.UUID(text.removeprefix(_CURSOR_PREFIX))
    except (binascii.Error, ValueError):  # UnicodeError is a ValueError
        raise bad from None
    # One spelling per cursor: base64 decoding skips stray characters, uuid.UUID takes braces.
    if encode_cursor(member_id) != cursor:
        raise bad
    return member_id


@dataclass(slots=True)
class AudienceEntry:
    cursor: str
    view: MemberView


@dataclass(slots=True)
class AudienceResult:
    entries: list[AudienceEntry] = field(default_factory=list)
    has_next_page: bool = False


def _basis_holds(purpose: Purpose) -> MemberState:
    """A member state for which the purpose's legal basis holds (an active membership, no
    objection, a grant of the required method on an accepted notice, with no expiry): the
    statement took only members for whom it holds, so what `decide` makes of this state is what
    it makes of each of them."""
    accepted = sorted(purpose.accepted_notice_versions) or [purpose.notice_version]
    grant = ConsentState(
        kind=ConsentEventKind.GRANTED,
        grant_id=None,  # each member's own grant comes with the page
        method=purpose.required_consent_method or ConsentMethod.EXPLICIT,
        notice_version=accepted[0],
        expires_at=None,
    )
    return MemberState(True, {purpose.key: grant}, frozenset())


def _decision(purpose: Purpose, fields: Mapping[str, Category], context: Context) -> Decision:
    decision = decide(purpose, fields, _basis_holds(purpose), context.now)
    # Only the purpose's categories can withhold a field of a member whose basis holds.
    assert all(w.code is ErrorCode.CATEGORY_NOT_IN_PURPOSE for w in decision.withheld.values()), (
        decision.withheld
    )
    return decision


def _first(context: Context, first: int) -> int:
    most = context.settings.max_list_size
    if not 1 <= first <= most:
        raise BadUserInput(f"`first` is 1 to {most}.", argument="first")
    return first


async def audience(
    context: Context,
    *,
    purpose: str,
    selection: Selection,
    fields: Mapping[str, Category],
    first: int,
    after: str | None,
) -> AudienceResult:
    """The next page of the members `purpose` may reach now, whom `selection` takes, with the
    `fields` asked that the purpose releases; one access event per member on the page.

    Arguments are checked before anything is read; a refused caller, purpose or selection is
    recorded (on no member) and raised.
    """
    first = _first(context, first)
    after_id = None if after is None else decode_cursor(after)
    selection.check()
    requested = tuple(sorted(fields))
    purposes = await context.purposes()
    try:
        declared = audience_purpose(context.principal, purpose, purposes)
    except TillitError as refused:
        context.audit.refused(
            operation=OPERATION,
            member_id=None,
            code=refused.code,
            purpose=purpose,
            fields=requested,
        )
        raise
    try:
        refuse_outside(declared, selection)
    except Refused as refused:
        filters = tuple(f"where.{f.graphql_name}" for f in outside(declared, selection))
        context.audit.refused(
            operation=OPERATION,
            member_id=None,
            code=refused.code,
            purpose=declared.key,
            legal_basis=declared.legal_basis,
            fields=(*requested, *filters),
        )
        raise

    page = await audience_page(
        context.db, declared, selection, now=context.now, first=first, after=after_id
    )
    result = AudienceResult(has_next_page=page.has_next_page)
    if not page.members:
        return result
    decision = _decision(declared, fields, context)
    ids = [member.record.id for member in page.members]
    # What the values of `consents` and `address` need, for the whole page in one statement each.
    consents_of = (
        {m: bundle.consents for m, bundle in (await fetch_bundles(context.db, ids)).items()}
        if "consents" in decision.released
        else {}
    )
    corrections: Mapping[uuid.UUID, Sequence[Correction]] = (
        await fetch_address_corrections(context.db, ids) if "address" in decision.released else {}
    )

    # The member's id and place in the audience are released whatever else is: never DENIED.
    outcome = AccessOutcome.PARTIAL if decision.withheld else AccessOutcome.RELEASED
    released = tuple(sorted(decision.released))
    withheld = {name: w.code.value for name, w in sorted(decision.withheld.items())}
    for member in page.members:
        record = member.record
        values = released_values(
            decision.released,
            record,
            member.enrichment,
            consents_of.get(record.id, {}),
            corrections,
            purposes,
            context.now,
        )
        context.audit.record(
            AccessRecord(
                operation=OPERATION,
                member_id=record.id,
                purpose=declared.key,
                legal_basis=declared.legal_basis,
                outcome=outcome,
                fields_requested=requested,
                fields_released=released,
                fields_withheld=withheld,
                consent_ids=member.consent_ids,
            )
        )
        result.entries.append(
            AudienceEntry(
                encode_cursor(record.id),
                MemberView(record.id, declared.key, values, decision.withheld),
            )
        )
    return result
