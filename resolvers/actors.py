"""Who may change a member's data, and on whose behalf."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.domain import (
    ActorKind,
    Anonymous,
    Capability,
    ClientPrincipal,
    MemberPrincipal,
    Principal,
    Purpose,
    Role,
)
from gateway.errors import (
    BadUserInput,
    Forbidden,
    PurposeNotPermitted,
    TillitError,
    Unauthenticated,
    UnknownPurpose,
)
from gateway.records.consents import Actor
from gateway.store.uuids import canonical_uuid
from resolvers.context import Context


def parse_uuid(raw: str, argument: str) -> uuid.UUID:
    try:
        return canonical_uuid(raw)
    except (ValueError, TypeError, AttributeError):
        raise BadUserInput(
            "A member id is a UUID in its canonical form: lower-case, 8-4-4-4-12 with hyphens.",
            argument=argument,
        ) from None


def target_of(principal: Principal, member_id: str | None) -> uuid.UUID:
    """The member a write is about: the one named, or for a member token the member themself."""
    if isinstance(principal, Anonymous):
        raise Unauthenticated()
    if member_id is not None:
        return parse_uuid(member_id, "memberId")
    if isinstance(principal, MemberPrincipal):
        return principal.member_id
    raise BadUserInput("Name the member (`memberId`).", argument="memberId")


def the_member(principal: Principal, what: str) -> uuid.UUID:
    """The calling member, for what only members do for themselves (object, leave, erase, ...)."""
    if isinstance(principal, Anonymous):
        raise Unauthenticated()
    if not isinstance(principal, MemberPrincipal):
        raise Forbidden(f"Only the member can {what}, with a member token.")
    return principal.member_id


def authorize_write(
    principal: Principal, target: uuid.UUID, capability: Capability, *, members_may: bool
) -> None:
    """A member acts on themself only (where members may act at all); an app client needs the
    capability; auditors and admins change no member data."""
    if isinstance(principal, MemberPrincipal):
        if not members_may:
            raise Forbidden("Members cannot perform this operation.")
        if target != principal.member_id:
            raise Forbidden("Members act only on their own data.")
        return
    if isinstance(principal, ClientPrincipal) and (
        principal.role is not Role.APP or capability not in principal.capabilities
    ):
        raise Forbidden(f"This client may not {capability.value.replace('_', ' ')}.")


def actor_of(principal: Principal) -> Actor:
    if isinstance(principal, ClientPrincipal):
        return Actor(ActorKind.CLIENT, principal.id)
    return Actor(ActorKind.MEMBER)


async def known_purpose(context: Context, key: str) -> Purpose:
    purpose = (await context.purposes()).get(key)
    if purpose is None or purpose.retired:
        raise UnknownPurpose(purpose=key[:64])
    return purpose


def client_may_use(principal: Principal, purpose: Purpose) -> None:
    if isinstance(principal, ClientPrincipal) and purpose.key not in principal.purposes:
        raise PurposeNotPermitted(purpose=purpose.key)


@dataclass
class WriteScope:
    """The member a write turned out to target, once known (for auditing a refusal)."""

    target: uuid.UUID | None = None


@asynccontextmanager
async def audited_write(
    context: Context, *, operation: str, purpose: str | None, fields: Iterable[str] = ()
) -> AsyncIterator[WriteScope]:
    """Run a write; if it is refused after its target member is known, audit the refusal."""
    scope = WriteScope()
    try:
        yield scope
    except TillitError as error:
        audit_refusal(
            context,
            operation=operation,
            member_id=scope.target,
            purpose=purpose,
            error=error,
            fields=fields,
        )
        raise


def audit_refusal(
    context: Context,
    *,
    operation: str,
    member_id: uuid.UUID | None,
    purpose: str | None,
    error: TillitError,
    fields: Iterable[str] = (),
) -> None:
    """Record a refused write that targeted a member."""
    if member_id is None:
        return
    context.audit.denied(
        operation=operation,
        member_ids=[member_id],
        purpose=purpose,
        code=error.code,
        fields=fields,
    )
