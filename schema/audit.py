"""GraphQL types of the access log (a Relay-style connection) and the transparency report."""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from typing import Any, NewType

import strawberry
from strawberry.scalars import JSON

from gateway.audit.log import LogEntry, LogFilter
from gateway.audit.transparency import EventSeal
from gateway.domain import AccessOutcome
from gateway.errors import BadUserInput
from schema.renders import renders

strawberry.enum(AccessOutcome, description="What an access event came to.")


@renders(LogEntry)
@strawberry.type(description="One access event: who touched which member's data, when and why.")
class AccessEvent:
    id: strawberry.ID
    occurred_at: dt.datetime
    request_id: str
    operation: str
    actor_kind: str = strawberry.field(description="CLIENT, MEMBER, SYSTEM or ANONYMOUS.")
    client_id: strawberry.ID | None
    client_name: str | None
    client_role: str | None
    actor_member_id: strawberry.ID | None
    member_id: strawberry.ID | None = strawberry.field(description="The member touched.")
    purpose: str | None = strawberry.field(description="The purpose declared, as sent.")
    legal_basis: str | None
    outcome: AccessOutcome
    fields_requested: list[str]
    fields_released: list[str]
    consent_ids: list[strawberry.ID]

    @strawberry.field(description="Withheld fields with the reason code of each.")
    def fields_withheld(self, root: strawberry.Parent[LogEntry]) -> list[WithheldField]:
        return [WithheldField(field=k, code=v) for k, v in sorted(root.fields_withheld.items())]

    @strawberry.field(
        description="What the operation recorded beside the fields, as in the export: a "
        "refusal's reason, the fields a purge or a change touched, an export's range, a "
        "filter. Names and codes, never a member's values."
    )
    def details(self, root: strawberry.Parent[LogEntry]) -> JSON:
        document: JSON = _json_scalar(root.details)
        return document


def _json_scalar(document: dict[str, Any]) -> Any:
    """A jsonb column's value as GraphQL's JSON scalar carries it: plain JSON values already."""
    return document


# A whole number of up to 64 bits (a log position, a tree size): GraphQL's Int stops at 2^31.
# Its scalar definition is in schema/root.py (StrawberryConfig.scalar_map).
Long = NewType("Long", int)
LONG_SCALAR = strawberry.scalar(
    name="Long",
    serialize=int,
    parse_value=lambda value: _long(value),
    description="A whole number of up to 64 bits (a log position or a tree size), as a JSON "
    "number: GraphQL's Int stops at 2^31.",
)


def _long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError("a whole number from 0 to 2^63 - 1")
    return value


@renders(EventSeal)
@strawberry.type(
    description="Where an access event sits in the log's Merkle tree, with the proof that it "
    "is in the signed tree of `treeSize` events (RFC 9162). Check it against GET "
    "/audit/checkpoint?size=treeSize, signed with a key of GET /audit/keys."
)
class AccessSeal:
    position: Long = strawberry.field(description="1 for the log's first event.")
    tree_size: Long

    @strawberry.field(description="Base64 of SHA-256(0x00 || leaf).")
    def leaf_hash(self, root: strawberry.Parent[EventSeal]) -> str:
        return base64.b64encode(root.leaf_hash).decode()

    @strawberry.field(
        description="The bytes the leaf hash covers (the event's sorted JSON, UTF-8), or null "
        "when they name someone you may not see (an attempt with another member's token)."
    )
    def leaf(self, root: strawberry.Parent[EventSeal]) -> str | None:
        return root.leaf

    @strawberry.field(description="The inclusion proof: base64 hashes, from the leaf up.")
    def proof(self, root: strawberry.Parent[EventSeal]) -> list[str]:
        return [base64.b64encode(h).decode() for h in root.proof]


@strawberry.type
class WithheldField:
    field: str
    code: str


@strawberry.type
class AccessEventEdge:
    cursor: str
    node: LogEntry = strawberry.field(graphql_type=AccessEvent)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(description="A page of the access log, newest first.")
class AccessEventConnection:
    edges: list[AccessEventEdge]
    page_info: PageInfo


@strawberry.input(description="Narrow the access log; all given conditions must hold.")
class AccessLogFilter:
    member_id: strawberry.ID | None = None
    client_id: strawberry.ID | None = None
    purpose: str | None = None
    outcome: AccessOutcome | None = None
    from_: dt.datetime | None = strawberry.field(default=None, name="from")
    to: dt.datetime | None = None
    request_id: str | None = strawberry.field(
        default=None, description="One request's events (the X-Request-ID it was answered with)."
    )
    operation: str | None = strawberry.field(
        default=None, description="A root field or route, e.g. `member`, `withdrawConsent`."
    )
    acting_member_id: strawberry.ID | None = strawberry.field(
        default=None, description="Events where this member acted (`me`, their own changes)."
    )


@strawberry.type
class Count:
    key: str
    count: int


def counts(counter: Counter[str]) -> list[Count]:
    return [Count(key=k, count=v) for k, v in counter.most_common()]


@strawberry.type(description="What happened to members' data in a period, for the DPO.")
class TransparencyReport:
    from_: dt.datetime = strawberry.field(name="from")
    to: dt.datetime
    accesses: int
    accesses_by_purpose: list[Count]
    accesses_by_client: list[Count]
    accesses_by_outcome: list[Count]
    withheld_reasons: list[Count]
    consents_granted: list[Count]
    consents_withdrawn: list[Count]
    consents_expired: list[Count]
    enrichment_records: int
    cleansing_records: int
    objections: int
    notices_overdue: int


def log_filter(where: AccessLogFilter | None, parse: Any) -> LogFilter:
    if where is None:
        return LogFilter()
    return LogFilter(
        member_id=parse(where.member_id, "memberId"),
        client_id=parse(where.client_id, "clientId"),
        purpose=where.purpose,
        outcome=where.outcome,
        start=where.from_,
        end=where.to,
        request_id=_bounded(where.request_id, "requestId", 128),
        operation=_bounded(where.operation, "operation", 64),
        acting_member_id=parse(where.acting_member_id, "actingMemberId"),
    )


def _bounded(value: str | None, argument: str, most: int) -> str | None:
    if value is not None and not 0 < len(value) <= most:
        raise BadUserInput(f"`{argument}` is 1 to {most} characters.", argument=argument)
    return value
