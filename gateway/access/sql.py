"""The access decision as SQL: the same rule as `gateway.access.policy.decide`, for many members in
one statement.

Pure: builds SQL text from a purpose and the fields asked, and imports no driver; `gateway.records`
runs it. Each clause is made from the definitions the Python decision reads (the purpose's legal
basis, its accepted notice versions, `ConsentMethod.satisfies`, `consent_state_at`, the categories a
purpose may use), and the checks come in the order `decide` makes them, so that the first failing
one gives the same code. `tests/gateway/access/test_sql_decision.py` holds the two together with
generated members, consents and purposes.

The expressions read a member's state from columns the caller names (`State`): the member row, the
newest consent event of the purpose (the `consent_states` view), and whether an objection to it is
in force. Values from the policy are written as SQL literals (`literal`), never as identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.domain import (
    Category,
    ConsentEventKind,
    ConsentMethod,
    ErrorCode,
    LegalBasis,
    MembershipStatus,
    Purpose,
)


def literal(value: str) -> str:
    """A text value as an SQL string literal (standard_conforming_strings, PostgreSQL's default
    since 9.1 and what Tillit's connections use)."""
    if "\x00" in value:
        raise ValueError("a text literal cannot hold NUL")
    return "'" + value.replace("'", "''") + "'"


def _literals(values: Iterable[str]) -> str:
    return ", ".join(literal(v) for v in sorted(values))


@dataclass(frozen=True, slots=True)
class State:
    """Where the statement holds each thing the decision reads about a member (SQL expressions).

    `kind` is NULL when the member never had a consent event for the purpose; `objected` is a
    boolean expression; `now` the moment decided at (a timestamptz parameter)."""

    now: str
    membership_status: str = "m.membership_status"
    kind: str = "c.kind"
    method: str = "c.method"
    notice_version: str = "c.notice_version"
    expires_at: str = "c.expires_at"
    consent_id: str = "c.id"
    objected: str = "o.objected IS NOT NULL"


def reads_consent(purpose: Purpose) -> bool:
    """Whether the decision for this purpose reads the member's consent (join `consent_states`)."""
    return purpose.legal_basis is LegalBasis.CONSENT


def reads_objection(purpose: Purpose) -> bool:
    """Whether it reads the member's objections (join `objections` in force)."""
    return purpose.legal_basis is LegalBasis.LEGITIMATE_INTEREST


def failure(purpose: Purpose, state: State) -> str:
    """An SQL text expression: the code of the reason the purpose's legal basis does not hold for
    the member (`_legal_basis_failure`), or NULL when it holds."""
    basis = purpose.legal_basis
    if basis is LegalBasis.CONTRACT:
        return (
            f"CASE WHEN {state.membership_status} IS DISTINCT FROM "
            f"{literal(MembershipStatus.ACTIVE.value)} "
            f"THEN {literal(ErrorCode.MEMBERSHIP_INACTIVE.value)} END"
        )
    if basis is LegalBasis.LEGITIMATE_INTEREST:
        return f"CASE WHEN {state.objected} THEN {literal(ErrorCode.OBJECTED.value)} END"
    if basis is LegalBasis.LEGAL_OBLIGATION:
        return "NULL::text"
    return _consent_failure(purpose, state)


def _consent_failure(purpose: Purpose, state: State) -> str:
    required = purpose.required_consent_method or ConsentMethod.EXPLICIT
    sufficient = [m.value for m in ConsentMethod if m.satisfies(required)]
    accepted = purpose.accepted_notice_versions
    granted = literal(ConsentEventKind.GRANTED.value)
    # consent_state_at: a grant past its expiry is expired from that instant.
    expired = (
        f"{state.kind} = {literal(ConsentEventKind.EXPIRED.value)} OR ({state.kind} = {granted} "
        f"AND {state.expires_at} IS NOT NULL AND {state.expires_at} <= {state.now})"
    )
    notice_not_accepted = (
        "true"  # no version accepted: every consent's notice is outdated
        if not accepted
        else f"{state.notice_version} IS NULL OR {state.notice_version} NOT IN "
        f"({_literals(accepted)})"
    )
    code = ErrorCode
    return (
        f"CASE WHEN {state.kind} IS NULL THEN {literal(code.CONSENT_REQUIRED.value)} "
        f"WHEN {state.kind} = {literal(ConsentEventKind.WITHDRAWN.value)} "
        f"THEN {literal(code.CONSENT_WITHDRAWN.value)} "
        f"WHEN {expired} THEN {literal(code.CONSENT_EXPIRED.value)} "
        f"WHEN {state.method} IS NULL OR {state.method} NOT IN ({_literals(sufficient)}) "
        f"THEN {literal(code.CONSENT_METHOD_INSUFFICIENT.value)} "
        f"WHEN {notice_not_accepted} THEN {literal(code.NOTICE_OUTDATED.value)} END"
    )


def relied_on(purpose: Purpose, state: State, failed: str, *, releases: bool = True) -> str:
    """An SQL uuid[] expression: the consents the release relies on (the grant, for a consent
    purpose whose basis holds; none otherwise), as `Decision.consent_ids`. `releases`: whether
    any field asked is in the purpose (when none is, nothing is released and nothing relied on)."""
    if not releases or not reads_consent(purpose):
        return "'{}'::uuid[]"
    return f"CASE WHEN ({failed}) IS NULL THEN ARRAY[{state.consent_id}] ELSE '{{}}'::uuid[] END"


@dataclass(frozen=True, slots=True)
class Fields:
    """The per-member answer for the fields asked, as SQL expressions over the failure code (the
    columns an access event records): released fields, withheld fields with their codes, and the
    outcome (`gateway.audit.trail.outcome_of`)."""

    released: str
    withheld: str
    outcome: str
    consent_ids: str


def _array(names: Iterable[str]) -> str:
    return f"ARRAY[{_literals(names)}]::text[]" if names else "'{}'::text[]"


def fields(purpose: Purpose, asked: Mapping[str, Category], state: State) -> Fields:
    """What `decide` releases and withholds of `asked`, and the consents it relies on."""
    failed = failure(purpose, state)
    in_purpose = sorted(name for name, c in asked.items() if c in purpose.categories)
    outside = sorted(name for name in asked if name not in in_purpose)
    # The outside fields are withheld whatever the member's state (CATEGORY_NOT_IN_PURPOSE).
    static = ", ".join(
        f"{literal(name)}::text, {literal(ErrorCode.CATEGORY_NOT_IN_PURPOSE.value)}::text"
        for name in outside
    )
    static_object = f"jsonb_build_object({static})"
    if not in_purpose:
        outcome = "'DENIED'" if outside else "'RELEASED'"
        return Fields("'{}'::text[]", static_object, outcome, "'{}'::uuid[]")
    pairs = ", ".join(f"{literal(name)}::text, ({failed})" for name in in_purpose)
    withheld = (
        f"CASE WHEN ({failed}) IS NULL THEN {static_object} "
        f"ELSE {static_object} || jsonb_build_object({pairs}) END"
    )
    released = f"CASE WHEN ({failed}) IS NULL THEN {_array(in_purpose)} ELSE '{{}}'::text[] END"
    outcome = (
        f"CASE WHEN ({failed}) IS NOT NULL THEN 'DENIED' "
        f"ELSE {literal('PARTIAL' if outside else 'RELEASED')} END"
    )
    return Fields(released, withheld, outcome, relied_on(purpose, state, failed))
