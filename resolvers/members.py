"""Reading member profiles under a declared purpose."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain import Category
from gateway.errors import BadUserInput, NotFound
from gateway.members import MemberRecord
from gateway.policy import MemberState, Withheld, decide, purpose_for
from resolvers.context import Context


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as released to one caller: the values that passed, and why the rest did not."""

    id: uuid.UUID
    purpose: str
    values: Mapping[str, Any]
    withheld: Mapping[str, Withheld]


def parse_member_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadUserInput("A member id is a UUID.", argument="id") from None


def _value(record: MemberRecord, name: str) -> Any:
    # Enriched values arrive with the consent-gated reads (2/7); until then none are stored here.
    return getattr(record, name, None)


async def read_member(
    context: Context, *, member_id: str, purpose: str, fields: Mapping[str, Category]
) -> MemberView:
    """The requested fields of one member that `purpose` releases to the caller.

    This is the one place a profile read is decided: the access event for it is written here too.
    """
    declared = purpose_for(context.principal, purpose, await context.purposes())
    subject = parse_member_id(member_id)
    record = await context.loaders.member.load(subject)
    if record is None:
        raise NotFound("No member has this id.", argument="id")
    state = MemberState(membership_active=record.membership_active)
    decision = decide(declared, fields, state, context.now)
    return MemberView(
        id=record.id,
        purpose=declared.key,
        values={name: _value(record, name) for name in decision.released},
        withheld=decision.withheld,
    )
