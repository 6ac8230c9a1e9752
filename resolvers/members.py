"""Reading member profiles under a declared purpose: decide, load what was released, audit."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from gateway.access.policy import Decision, Decisions, Withheld, consent_problem, purpose_for
from gateway.audit.trail import AccessRecord, actor_columns, outcome_of
from gateway.domain import (
    AccessOutcome,
    Category,
    ConsentMethod,
    ConsentState,
    EnrichedField,
    ErrorCode,
    LegalBasis,
    MemberState,
    Purpose,
)
from gateway.errors import (
    AuditUnavailable,
    BadUserInput,
    DatabaseUnavailable,
    NotFound,
    TillitError,
)
from gateway.records import set_reads
from gateway.records.members import (
    Address,
    Correction,
    MemberBundle,
    MemberRecord,
    fetch_address_corrections,
    fetch_bundles,
    fetch_objections,
)
from gateway.store import db
from gateway.store.db import Raw
from resolvers.actors import parse_uuid
from resolvers.context import Context

MAX_IDS = 100
V = TypeVar("V")
_ENRICHED = {f.value: f for f in EnrichedField}


@dataclass(frozen=True, slots=True)
class AddressView:
    street: str | None
    postal_code: str | None
    city: str | None
    country: str | None
    corrections: Sequence[Correction]


@dataclass(frozen=True, slots=True)
class ConsentStatusView:
    """Where a member stands with one consent purpose, for an app deciding whether to ask."""

    purpose: str
    state: str
    method: ConsentMethod | None
    notice_version: str | None
    changed_at: dt.datetime | None
    expires_at: dt.datetime | None
    required_method: ConsentMethod
    current_notice_version: str
    problem: ErrorCode | None
    receipt_id: uuid.UUID | None = None


# Not frozen: made per member by a profile read (see MemberRecord in gateway.records.members).
@dataclass(slots=True)
class MemberView:
    """One member as released to one caller: the values that passed, and why the rest did not."""

    id: uuid.UUID
    purpose: str
    values: Mapping[str, Any]
    withheld: Mapping[str, Withheld]


async def _load(
    context: Context,
    direct: bool,
    fetch: Callable[[Raw, Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, V]]],
    loader: Callable[[], DataLoader[uuid.UUID, V]],
    ids: Sequence[uuid.UUID],
    default: V,
) -> Sequence[V]:
    """The values for `ids`, in order: through the operation's DataLoader (batched with the other
    fields that ask), or `direct`ly with one statement when nothing can batch with it."""
    if not direct:
        return await loader().load_many(ids)
    found = await fetch(context.db, ids)
    return [found.get(member_id, default) for member_id in ids]


@dataclass(frozen=True, slots=True)
class _Summary:
    outcome: AccessOutcome
    released: tuple[str, ...]
    withheld: Mapping[str, str]


class _Summaries:
    """The audit summary of each distinct decision in one read. Members decided alike share
    their decision's `withheld` mapping (gateway.access.policy.Decisions), so each summary is made
    once and found again by that mapping's identity (the decisions hold it, so it stays alive)."""

    def __init__(self) -> None:
        self._known: dict[tuple[frozenset[str], int], _Summary] = {}

    def get(self, decision: Decision) -> _Summary:
        released, withheld = decision.released, decision.withheld
        key = (released, id(withheld))
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = _Summary(
                outcome_of(released, withheld),
                tuple(sorted(released)),
                {f: w.code.value for f, w in sorted(withheld.items())},
            )
        return found


def parse_member_ids(raw: Sequence[str]) -> list[uuid.UUID]:
    if not raw:
        raise BadUserInput("Give at least one member id.", argument="ids")
    if len(raw) > MAX_IDS:
        raise BadUserInput(f"Give at most {MAX_IDS} member ids per call.", argument="ids")
    ids = [parse_uuid(value, "ids") for value in raw]
    if len(set(ids)) != len(ids):
        raise BadUserInput("The same member id is given twice.", argument="ids")
    return ids


def consent_statuses(
    purposes: Mapping[str, Purpose], consents: Mapping[str, ConsentState], now: dt.datetime
) -> list[ConsentStatusView]:
    """The member's standing with every consent purpose in force, including those never asked."""
    statuses = []
    for purpose in purposes.values():
        if purpose.legal_basis is not LegalBasis.CONSENT:
            continue
        consent = consents.get(purpose.key)
        state = consent.state_at(now).value if consent else "NOT_GIVEN"
        statuses.append(
            ConsentStatusView(
                purpose=purpose.key,
                state=state,
                method=consent.method if consent else None,
                notice_version=consent.notice_version if consent else None,
                changed_at=consent.changed_at if consent else None,
                expires_at=consent.expires_at if consent else None,
                required_method=purpose.required_consent_method or ConsentMethod.EXPLICIT,
                current_notice_version=purpose.notice_version,
                problem=consent_problem(purpose, consent, now),
                receipt_id=consent.grant_id if consent else None,
            )
        )
    return statuses


def _base_value(record: MemberRecord, name: str, corrections: Sequence[Correction]) -> Any:
    if name == "address":
        address: Address = record.address
        return AddressView(
            address.street, address.postal_code, address.city, address.country, corrections
        )
    return getattr(record, name)


def released_values(
    released: Iterable[str],
    record: MemberRecord,
    enrichment: Mapping[EnrichedField, Any],
    consents: Mapping[str, ConsentState],
    corrections: Mapping[uuid.UUID, Sequence[Correction]],
    purposes: Mapping[str, Purpose],
    now: dt.datetime,
) -> dict[str, Any]:
    """The values of a member's `released` fields, as a view holds them (profile reads and
    audience pages alike). `consents` is the member's standing with every purpose when
    `consents` is released; `corrections` the address corrections by member, when `address` is."""
    values: dict[str, Any] = {}
    for name in released:
        enriched = _ENRICHED.get(name)
        if enriched is not None:
            values[name] = enrichment.get(enriched)
        elif name == "consents":
            values[name] = consent_statuses(purposes, consents, now)
        else:
            values[name] = _base_value(record, name, corrections.get(record.id, ()))
    return values


async def _declared(
    context: Context,
    member_ids: Sequence[str],
    purpose: str,
    fields: Mapping[str, Category],
    operation: str,
) -> tuple[list[uuid.UUID], dict[str, Purpose], Purpose]:
    """A read's ids, the purposes in force and the one declared, once the caller may act under
    it; a refusal is recorded on each targeted member and raised (every read path alike)."""
    ids = parse_member_ids(member_ids)
    purposes = await context.purposes()
    try:
        declared = purpose_for(context.principal, purpose, purposes)
    except TillitError as refused:
        context.audit.denied(
            operation=operation, member_ids=ids, purpose=purpose, code=refused.code, fields=fields
        )
        raise
    return ids, purposes, declared


async def read_members(
    context: Context,
    *,
    member_ids: Sequence[str],
    purpose: str,
    fields: Mapping[str, Category],
    operation: str,
    direct: bool = False,
) -> list[MemberView | TillitError]:
    """Decide and load the requested fields of each member; one access event per member.

    This is the one place profile reads are decided and audited. Operation-level refusals
    (caller, purpose) raise; a member that does not exist is a NotFound in its position.
    `direct` reads without the per-request DataLoaders, for an operation with no other field
    to batch with (the direct executor in gateway/web/fastpath.py).
    """
    ids, purposes, declared = await _declared(context, member_ids, purpose, fields, operation)
    # One statement for the members, their consent states and their enriched values. Read
    # directly, only the declared purpose's consent is needed (all of them for `consents`).
    needed = None if "consents" in fields else declared.key
    bundles: Sequence[MemberBundle | None] = await _load(
        context,
        direct,
        functools.partial(fetch_bundles, purpose=needed),
        lambda: context.loaders.bundle,
        ids,
        None,
    )
    existing = [bundle.record.id for bundle in bundles if bundle is not None]
    basis = declared.legal_basis
    objections: Sequence[frozenset[str]] = []
    if basis is LegalBasis.LEGITIMATE_INTEREST:
        objections = await _load(
            context,
            direct,
            fetch_objections,
            lambda: context.loaders.objections,
            existing,
            frozenset(),
        )
    objections_of = dict(zip(existing, objections, strict=False))

    decisions = Decisions(declared, fields, context.now)
    decided: dict[uuid.UUID, Decision] = {}
    for bundle in bundles:
        if bundle is not None:
            member_id = bundle.record.id
            state = MemberState(
                bundle.record.membership_active,
                bundle.consents,
                objections_of.get(member_id, frozenset()),
            )
            decided[member_id] = decisions.of(state)

    address_ids = [m for m, d in decided.items() if "address" in d.released]
    no_corrections: Sequence[Correction] = ()
    found_corrections = await _load(
        context,
        direct,
        fetch_address_corrections,
        lambda: context.loaders.address_corrections,
        address_ids,
        no_corrections,
    )
    corrections = dict(zip(address_ids, found_corrections, strict=True))

    requested = tuple(sorted(fields))
    summaries = _Summaries()
    results: list[MemberView | TillitError] = []
    for member_id, bundle in zip(ids, bundles, strict=True):
        if bundle is None:
            context.audit.denied(
                operation=operation,
                member_ids=[member_id],
                purpose=declared.key,
                code=ErrorCode.NOT_FOUND,
                fields=fields,
                legal_basis=basis,
            )
            results.append(NotFound("No member has this id.", argument="id"))
            continue
        decision = decided[member_id]
        values = released_values(
            decision.released,
            bundle.record,
            bundle.enrichment,
            bundle.consents,
            corrections,
            purposes,
            context.now,
        )
        summary = summaries.get(decision)
        context.audit.record(
            AccessRecord(
                operation=operation,
                member_id=member_id,
                purpose=declared.key,
                legal_basis=basis,
                outcome=summary.outcome,
                fields_requested=requested,
                fields_released=summary.released,
                fields_withheld=summary.withheld,
                consent_ids=decision.consent_ids,
            )
        )
        results.append(MemberView(member_id, declared.key, values, decision.withheld))
    return results


async def read_member(
    context: Context,
    *,
    member_id: str,
    purpose: str,
    fields: Mapping[str, Category],
    direct: bool = False,
) -> MemberView:
    """One member; see read_members."""
    subject = parse_uuid(member_id, "id")
    [result] = await read_members(
        context,
        member_ids=[str(subject)],
        purpose=purpose,
        fields=fields,
        operation="member",
        direct=direct,
    )
    if isinstance(result, TillitError):
        raise result
    return result


@dataclass(frozen=True, slots=True)
class SetRead:
    """A set-based read's answer (gateway.records.set_reads): the purpose it ran under and, in
    the order asked, each id's row."""

    purpose: Purpose
    rows: Sequence[set_reads.Row]


async def read_set(
    context: Context,
    *,
    member_ids: Sequence[str],
    purpose: str,
    fields: Mapping[str, Category],
    leaves: Sequence[set_reads.Leaf],
    operation: str,
) -> SetRead:
    """`read_members` as one statement: decided, audited and shaped by PostgreSQL. The same
    refusals, raised and recorded the same way, before the statement runs."""
    ids, _, declared = await _declared(context, member_ids, purpose, fields, operation)
    actor = actor_columns(context.principal)
    try:
        rows = await set_reads.read_set(
            context.db,
            purpose=declared,
            fields=fields,
            leaves=leaves,
            ids=ids,
            now=context.now,
            actor=set_reads.Actor(
                occurred_at=context.audit.now,
                request_id=context.audit.request_id,
                operation=operation,
                actor_kind=actor["actor_kind"],
                client_id=actor.get("client_id"),
                actor_member_id=actor.get("actor_member_id"),
            ),
        )
    except (TillitError, asyncio.CancelledError):
        raise
    except Exception as failed:
        # The statement writes the access events: whatever stopped it (the database gone, a
        # refused insert, a failed commit) left nothing written, and nothing may be answered.
        if db.unavailable(failed):
            raise DatabaseUnavailable() from failed
        raise AuditUnavailable() from failed
    written = context.audit.written
    for row in rows:
        written[(declared.key, row.outcome)] += 1
    return SetRead(declared, rows)
