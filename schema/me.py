"""GraphQL types of `me`: a member's own data and its history."""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Annotated, Any

import strawberry

from gateway.audit.log import LogEntry
from gateway.audit.transparency import EventSeal
from gateway.domain import ConsentEventKind
from gateway.records.consents import ConsentEventRecord
from gateway.records.lifecycle import ProfileChangeRecord
from gateway.records.member_data import Notice, ObjectionEntry
from gateway.records.members import EnrichedValue, MemberRecord
from resolvers import me as resolve
from resolvers.consents import ReceiptView
from resolvers.context import Context
from resolvers.members import AddressView, ConsentStatusView
from schema.audit import AccessSeal, Long, PageInfo, WithheldField
from schema.enums import MembershipStatus, Tier
from schema.lifecycle import MyProfileChange
from schema.receipts import ConsentReceipt
from schema.renders import renders
from schema.types import Address, ConsentStatus

Info = strawberry.Info[Context, None]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@renders(EnrichedValue)
@strawberry.type(description="A value a data broker supplied about you, and where it came from.")
class MyEnrichedValue:
    field: str
    source: str
    obtained_at: dt.datetime
    purpose: str = strawberry.field(description="The purpose you consented to that it rests on.")
    consent_id: strawberry.ID

    @strawberry.field(description="The value, as text.")
    def value(self, root: strawberry.Parent[EnrichedValue]) -> str | None:
        return _text(root.value)


@renders(ConsentEventRecord)
@strawberry.type(description="One change in your consents.")
class MyConsentEvent:
    @strawberry.field
    def event_id(self, root: strawberry.Parent[ConsentEventRecord]) -> strawberry.ID:
        return strawberry.ID(str(root.id))

    @strawberry.field(description="The receipt id, for a grant.")
    def receipt_id(self, root: strawberry.Parent[ConsentEventRecord]) -> strawberry.ID | None:
        return strawberry.ID(str(root.id)) if root.kind is ConsentEventKind.GRANTED else None

    @strawberry.field
    def purpose(self, root: strawberry.Parent[ConsentEventRecord]) -> str:
        return root.purpose

    @strawberry.field(description="GRANTED, WITHDRAWN or EXPIRED.")
    def change(self, root: strawberry.Parent[ConsentEventRecord]) -> str:
        return str(root.kind.value)

    @strawberry.field
    def method(self, root: strawberry.Parent[ConsentEventRecord]) -> str | None:
        return root.method.value if root.method else None

    @strawberry.field
    def notice_version(self, root: strawberry.Parent[ConsentEventRecord]) -> str | None:
        return root.notice_version

    @strawberry.field
    def channel(self, root: strawberry.Parent[ConsentEventRecord]) -> str:
        return root.channel

    @strawberry.field(description="`member` (you), `client` (an app, for you) or `system`.")
    def by(self, root: strawberry.Parent[ConsentEventRecord]) -> str:
        return str(root.actor_kind.value).lower()

    @strawberry.field
    def at(self, root: strawberry.Parent[ConsentEventRecord]) -> dt.datetime:
        return root.occurred_at

    @strawberry.field
    def expires_at(self, root: strawberry.Parent[ConsentEventRecord]) -> dt.datetime | None:
        return root.expires_at


@renders(Notice)
@strawberry.type(description="A correction made to your data from a public register.")
class MyNotice:
    field: str | None
    source: str | None
    changed_at: dt.datetime | None
    due_at: dt.datetime = strawberry.field(description="When you had to be told at the latest.")
    delivered_at: dt.datetime | None = strawberry.field(
        description="When you were told (reading it here counts)."
    )

    @strawberry.field
    def old_value(self, root: strawberry.Parent[Notice]) -> str | None:
        return _text(root.old_value)

    @strawberry.field
    def new_value(self, root: strawberry.Parent[Notice]) -> str | None:
        return _text(root.new_value)


@renders(ObjectionEntry)
@strawberry.type(description="Your objection to processing under a legitimate interest.")
class MyObjection:
    purpose: str
    reason: str | None
    objected_at: dt.datetime
    lifted_at: dt.datetime | None


@strawberry.enum(description="Whose uses of your data to list.")
class AccessParty(enum.Enum):
    ANYONE = "ANYONE"
    OTHERS = strawberry.enum_value("OTHERS", description="Everyone but you: apps, staff, Tillit.")
    ME = strawberry.enum_value("ME", description="Your own visits and changes.")


@renders(LogEntry)
@strawberry.type(description="One use of your data: when, by whom, why, and what they got.")
class MyAccess:
    occurred_at: dt.datetime
    operation: str
    purpose: str | None
    outcome: str
    fields_released: list[str]

    @strawberry.field(
        description="The app or service (its name, not a person), `you`, `another member` (an "
        "attempt by someone else's member token, which was refused), or `system`."
    )
    def by(self, root: strawberry.Parent[LogEntry]) -> str:
        return root.actor_label

    @strawberry.field(description="app, auditor or admin.")
    def by_role(self, root: strawberry.Parent[LogEntry]) -> str | None:
        return root.client_role

    @strawberry.field
    def fields_withheld(self, root: strawberry.Parent[LogEntry]) -> list[WithheldField]:
        return [WithheldField(field=k, code=v) for k, v in sorted(root.fields_withheld.items())]

    @strawberry.field(
        description="With `accessLog(proofsAt:)`: where this access sits in the signed log and "
        "the proof that it is there; null when it was sealed after that size (or not yet).",
        graphql_type=AccessSeal | None,
    )
    def seal(self, root: strawberry.Parent[LogEntry]) -> EventSeal | None:
        seal: EventSeal | None = root.seal
        return seal


@strawberry.type
class MyAccessEdge:
    cursor: str
    node: LogEntry = strawberry.field(graphql_type=MyAccess)


@strawberry.type
class MyAccessConnection:
    edges: list[MyAccessEdge]
    page_info: PageInfo


@renders(MemberRecord)
@strawberry.type(description="Your profile, all of it.")
class MyProfile:
    first_name: str
    last_name: str
    email: str
    phone: str | None
    tier: Tier
    points: int
    member_since: dt.date
    membership_status: MembershipStatus
    deceased: bool

    @strawberry.field(graphql_type=Address)
    async def address(self, root: strawberry.Parent[MemberRecord], info: Info) -> AddressView:
        return await resolve.address(info.context, root)


@strawberry.type(description="Everything Tillit holds about you, and everything done with it.")
class Me:
    @strawberry.field
    def id(self, root: strawberry.Parent[MemberRecord]) -> strawberry.ID:
        return strawberry.ID(str(root.id))

    @strawberry.field(graphql_type=MyProfile)
    def profile(self, root: strawberry.Parent[MemberRecord]) -> MemberRecord:
        return root

    @strawberry.field(
        description="Values from data brokers, each with its source and consent.",
        graphql_type=list[MyEnrichedValue],
    )
    async def enriched(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[EnrichedValue]:
        return await resolve.enriched(info.context, root.id)

    @strawberry.field(
        description="Where you stand with each purpose that needs your consent.",
        graphql_type=list[ConsentStatus],
    )
    async def consents(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[ConsentStatusView]:
        return await resolve.consents(info.context, root.id)

    @strawberry.field(
        description="Every consent change, oldest first, with receipt ids.",
        graphql_type=list[MyConsentEvent],
    )
    async def consent_history(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[ConsentEventRecord]:
        return await resolve.consent_history(info.context, root.id)

    @strawberry.field(
        description="Corrections from registers. Reading them marks them delivered.",
        graphql_type=list[MyNotice],
    )
    async def notices(self, root: strawberry.Parent[MemberRecord], info: Info) -> list[Notice]:
        return await resolve.notices(info.context, root.id)

    @strawberry.field(graphql_type=list[MyObjection])
    async def objections(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[ObjectionEntry]:
        return await resolve.objections(info.context, root.id)

    @strawberry.field(
        description="Every change of your profile, newest first: before, after, by whom.",
        graphql_type=list[MyProfileChange],
    )
    async def profile_changes(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[ProfileChangeRecord]:
        return await resolve.profile_changes(info.context, root.id)

    @strawberry.field(
        description="The receipt of one of your consents, by its receipt id.",
        graphql_type=ConsentReceipt | None,
    )
    async def consent_receipt(
        self, root: strawberry.Parent[MemberRecord], info: Info, id: strawberry.ID
    ) -> ReceiptView | None:
        return await resolve.consent_receipt(info.context, root.id, id)

    @strawberry.field(description="Who used your data, when and why; newest first.")
    async def access_log(
        self,
        root: strawberry.Parent[MemberRecord],
        info: Info,
        first: int = 20,
        after: str | None = None,
        by: AccessParty = AccessParty.ANYONE,
        proofs_at: Annotated[
            Long | None,
            strawberry.argument(
                description="A published checkpoint's tree size: each entry's `seal` then "
                "proves it is in that signed tree."
            ),
        ] = None,
    ) -> MyAccessConnection:
        page = await resolve.access_history(
            info.context,
            root.id,
            first=first,
            after=after,
            by_the_member={AccessParty.ME: True, AccessParty.OTHERS: False}.get(by),
            proofs_at=proofs_at,
        )
        edges = [MyAccessEdge(cursor=e.cursor, node=e) for e in page.entries]
        return MyAccessConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
            ),
        )


def export_json(document: dict[str, Any]) -> Any:
    """The document as GraphQL's JSON scalar carries it."""
    return json.loads(json.dumps(document))
