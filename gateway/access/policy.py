"""The access decision: which requested member fields may leave the gateway, and why not.

Pure functions over state that the caller has already loaded (caller, purpose, the member's consents
and objections); no database, no GraphQL. That keeps the rules in one place and testable as a table.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain import (
    Anonymous,
    Capability,
    Category,
    ClientPrincipal,
    ConsentEventKind,
    ConsentMethod,
    ConsentState,
    ErrorCode,
    LegalBasis,
    MemberPrincipal,
    MemberState,
    Principal,
    Purpose,
    Role,
)
from gateway.errors import Forbidden, PurposeNotPermitted, Unauthenticated, UnknownPurpose


@dataclass(frozen=True, slots=True)
class Withheld:
    code: ErrorCode
    message: str
    hints: Mapping[str, Any] = field(default_factory=dict)


# Not frozen: made per member by a profile read (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
class Decision:
    purpose: Purpose
    released: frozenset[str]
    withheld: Mapping[str, Withheld]
    consent_ids: tuple[uuid.UUID, ...] = ()


def require_auditor(caller: Principal, doing: str = "read the access log") -> ClientPrincipal:
    """The caller, if it is an auditor client; Unauthenticated or Forbidden otherwise."""
    if isinstance(caller, Anonymous):
        raise Unauthenticated()
    if not isinstance(caller, ClientPrincipal) or caller.role is not Role.AUDITOR:
        raise Forbidden(f"Only auditors {doing}.")
    return caller


def purpose_for(caller: Principal, purpose_key: str, purposes: Mapping[str, Purpose]) -> Purpose:
    """The purpose a client declared, once it is known and the client may act under it."""
    if isinstance(caller, Anonymous):
        raise Unauthenticated()
    if isinstance(caller, MemberPrincipal):
        raise Forbidden("Members read their own data through `me`.")
    if not isinstance(caller, ClientPrincipal) or caller.role is not Role.APP:
        raise Forbidden("Only app clients read member profiles.")
    purpose = purposes.get(purpose_key)
    if purpose is None or purpose.retired:
        raise UnknownPurpose(purpose=purpose_key)
    if purpose.key not in caller.purposes:
        raise PurposeNotPermitted(purpose=purpose.key)
    return purpose


def audience_purpose(
    caller: Principal, purpose_key: str, purposes: Mapping[str, Purpose]
) -> Purpose:
    """The purpose an app client selects an audience under (pages, exports, syncs): as for any
    read (`purpose_for`), and the client holds the `audience` capability."""
    purpose = purpose_for(caller, purpose_key, purposes)
    require_audience_client(caller)
    return purpose


def require_audience_client(caller: Principal) -> ClientPrincipal:
    """The caller, if it is an app client with the `audience` capability."""
    if isinstance(caller, Anonymous):
        raise Unauthenticated()
    if not isinstance(caller, ClientPrincipal) or caller.role is not Role.APP:
        raise Forbidden("Only app clients select audiences.")
    if Capability.AUDIENCE not in caller.capabilities:
        raise Forbidden("This client may not select audiences (capability `audience`).")
    return caller


_MESSAGES = {
    ErrorCode.MEMBERSHIP_INACTIVE: "The membership is not active.",
    ErrorCode.OBJECTED: "The member objected to this purpose.",
    ErrorCode.CONSENT_REQUIRED: "The member has not consented to this purpose.",
    ErrorCode.CONSENT_WITHDRAWN: "The member withdrew consent.",
    ErrorCode.CONSENT_EXPIRED: "The member's consent has expired.",
    ErrorCode.NOTICE_OUTDATED: (
        "The consent was given on a privacy notice this purpose no longer accepts."
    ),
}
# The reasons a consent purpose's basis fails for; their errors say what consent would do.
CONSENT_CODES = (
    ErrorCode.CONSENT_REQUIRED,
    ErrorCode.CONSENT_WITHDRAWN,
    ErrorCode.CONSENT_EXPIRED,
    ErrorCode.CONSENT_METHOD_INSUFFICIENT,
    ErrorCode.NOTICE_OUTDATED,
)


def basis_codes(purpose: Purpose) -> tuple[ErrorCode, ...]:
    """Every reason the purpose's legal basis can fail for a member."""
    basis = purpose.legal_basis
    if basis is LegalBasis.CONTRACT:
        return (ErrorCode.MEMBERSHIP_INACTIVE,)
    if basis is LegalBasis.LEGITIMATE_INTEREST:
        return (ErrorCode.OBJECTED,)
    if basis is LegalBasis.LEGAL_OBLIGATION:
        return ()
    return CONSENT_CODES


def withheld_for(purpose: Purpose, code: ErrorCode) -> Withheld:
    """The reason `code` as the decision gives it for this purpose: message and hints."""
    if code not in CONSENT_CODES:
        return Withheld(code, _MESSAGES[code])
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    hints = {"requiredMethod": required.value, "noticeVersion": purpose.notice_version}
    if code is ErrorCode.CONSENT_METHOD_INSUFFICIENT:
        return Withheld(code, f"This purpose needs {required.value.lower()} consent.", hints)
    return Withheld(code, _MESSAGES[code], hints)


def _legal_basis_failure(
    purpose: Purpose, state: MemberState, now: dt.datetime
) -> tuple[Withheld | None, uuid.UUID | None]:
    """Why the purpose's legal basis does not hold for this member, or the consent relied on."""
    basis = purpose.legal_basis
    if basis is LegalBasis.CONTRACT:
        if not state.membership_active:
            return withheld_for(purpose, ErrorCode.MEMBERSHIP_INACTIVE), None
        return None, None
    if basis is LegalBasis.LEGITIMATE_INTEREST:
        if purpose.key in state.objections:
            return withheld_for(purpose, ErrorCode.OBJECTED), None
        return None, None
    if basis is LegalBasis.LEGAL_OBLIGATION:
        return None, None
    return _consent_failure(purpose, state.consents.get(purpose.key), now)


def _consent_failure(
    purpose: Purpose, consent: ConsentState | None, now: dt.datetime
) -> tuple[Withheld | None, uuid.UUID | None]:
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    if consent is None:
        code = ErrorCode.CONSENT_REQUIRED
    elif consent.kind is ConsentEventKind.WITHDRAWN:
        code = ErrorCode.CONSENT_WITHDRAWN
    elif consent.state_at(now) is ConsentEventKind.EXPIRED:
        code = ErrorCode.CONSENT_EXPIRED
    elif consent.method is None or not consent.method.satisfies(required):
        code = ErrorCode.CONSENT_METHOD_INSUFFICIENT
    elif consent.notice_version not in purpose.accepted_notice_versions:
        code = ErrorCode.NOTICE_OUTDATED
    else:
        return None, consent.grant_id
    return withheld_for(purpose, code), None


def consent_problem(
    purpose: Purpose, consent: ConsentState | None, now: dt.datetime
) -> ErrorCode | None:
    """Why this consent does not (now) let the purpose release data, or None when it does."""
    failure, _ = _consent_failure(purpose, consent, now)
    return failure.code if failure else None


def decide(
    purpose: Purpose,
    fields: Mapping[str, Category],
    state: MemberState,
    now: dt.datetime,
) -> Decision:
    """Release or withhold each requested field of one member under one purpose.

    The caller's right to act under the purpose is settled first, by `purpose_for`.
    """
    if any(c in purpose.categories for c in fields.values()):
        failure, consent_id = _legal_basis_failure(purpose, state, now)
    else:
        failure, consent_id = None, None  # nothing asked in the purpose: its basis is not read
    return decided(purpose, fields, failure, consent_id)


def decided(
    purpose: Purpose,
    fields: Mapping[str, Category],
    failure: Withheld | None,
    consent_id: uuid.UUID | None = None,
) -> Decision:
    """The decision once the legal basis is settled: `failure` why it does not hold (None: it
    holds, relying on `consent_id`). Fields outside the purpose's categories are withheld first,
    in the order asked, then those in it (`decide`; the set-based read reports the same)."""
    withheld: dict[str, Withheld] = {}
    released: set[str] = set()
    in_purpose = {name: c for name, c in fields.items() if c in purpose.categories}
    for name, category in fields.items():
        if name not in in_purpose:
            withheld[name] = Withheld(
                ErrorCode.CATEGORY_NOT_IN_PURPOSE,
                f"Category {category.value} is not used by purpose {purpose.key}.",
            )
    consent_ids: tuple[uuid.UUID, ...] = ()
    if in_purpose:
        if failure is not None:
            withheld.update(dict.fromkeys(in_purpose, failure))
        else:
            released.update(in_purpose)
            consent_ids = (consent_id,) if consent_id else ()
    return Decision(purpose, frozenset(released), withheld, consent_ids)


class Decisions:
    """`decide` for the members of one read: one purpose, one set of fields, one moment.

    A hundred-member read falls into a handful of distinct outcomes (released; withheld for one
    reason or another), so members whose states decide alike share one computed decision; only
    the consent relied on is each member's own. The key is everything `decide` reads of a
    member's state for this purpose, so a shared decision is the one `decide` would make.
    """

    def __init__(self, purpose: Purpose, fields: Mapping[str, Category], now: dt.datetime) -> None:
        self.purpose = purpose
        self.fields = fields
        self.now = now
        self._known: dict[tuple[Any, ...], Decision] = {}

    def of(self, state: MemberState) -> Decision:
        purpose_key = self.purpose.key
        consent = state.consents.get(purpose_key)
        key: tuple[Any, ...] = (
            state.membership_active,
            purpose_key in state.objections,
            None
            if consent is None
            else (consent.kind, consent.method, consent.notice_version, consent.expires_at),
        )
        shared = self._known.get(key)
        if shared is None:
            shared = self._known[key] = decide(self.purpose, self.fields, state, self.now)
        if not shared.consent_ids:
            return shared
        # Released under a consent: the member's own grant, with the shared outcome.
        assert consent is not None
        assert consent.grant_id is not None
        return Decision(self.purpose, shared.released, shared.withheld, (consent.grant_id,))
