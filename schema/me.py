"""GraphQL types of `me`: a member's own data and its history."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

import strawberry

from gateway.audit.log import LogEntry
from gateway.records.members import MemberRecord
from resolvers import me as resolve
from resolvers.context import Context
from schema.audit import PageInfo, WithheldField
from schema.enums import MembershipStatus, Tier
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


@strawberry.type(description="A value a data broker supplied about you, and where it came from.")
class MyEnrichedValue:
    field: str
    source: str
    obtained_at: dt.datetime
    purpose: str = strawberry.field(description="The purpose you consented to that it rests on.")
    consent_id: strawberry.ID

    @strawberry.field(description="The value, as text.")
    def value(self, root: strawberry.Parent[Any]) -> str | None:
        return _text(root.value)


@strawberry.type(description="One change in your consents.")
class MyConsentEvent:
    @strawberry.field
    def event_id(self, root: strawberry.Parent[Any]) -> strawberry.ID:
        return strawberry.ID(str(root.id))

    @strawberry.field(description="The receipt id, for a grant.")
    def receipt_id(self, root: strawberry.Parent[Any]) -> strawberry.ID | None:
        return strawberry.ID(str(root.id)) if root.kind.value == "GRANTED" else None

    @strawberry.field
    def purpose(self, root: strawberry.Parent[Any]) -> str:
        return str(root.purpose)

    @strawberry.field(description="GRANTED, WITHDRAWN or EXPIRED.")
    def change(self, root: strawberry.Parent[Any]) -> str:
        return str(root.kind.value)

    @strawberry.field
    def method(self, root: strawberry.Parent[Any]) -> str | None:
        return root.method.value if root.method else None

    @strawberry.field
    def notice_version(self, root: strawberry.Parent[Any]) -> str | None:
        return cast(str | None, root.notice_version)

    @strawberry.field
    def channel(self, root: strawberry.Parent[Any]) -> str:
        return str(root.channel)

    @strawberry.field(description="`member` (you), `client` (an app, for you) or `system`.")
    def by(self, root: strawberry.Parent[Any]) -> str:
        return str(root.actor_kind.value).lower()

    @strawberry.field
    def at(self, root: strawberry.Parent[Any]) -> dt.datetime:
        return cast(dt.datetime, root.occurred_at)

    @strawberry.field
    def expires_at(self, root: strawberry.Parent[Any]) -> dt.datetime | None:
        return cast(dt.datetime | None, root.expires_at)


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
    def old_value(self, root: strawberry.Parent[Any]) -> str | None:
        return _text(root.old_value)

    @strawberry.field
    def new_value(self, root: strawberry.Parent[Any]) -> str | None:
        return _text(root.new_value)


@strawberry.type(description="Your objection to processing under a legitimate interest.")
class MyObjection:
    purpose: str
    reason: str | None
    objected_at: dt.datetime
    lifted_at: dt.datetime | None


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
    def by_role(self, root: strawberry.Parent[Any]) -> str | None:
        return cast(str | None, root.client_role)

    @strawberry.field
    def fields_withheld(self, root: strawberry.Parent[Any]) -> list[WithheldField]:
        return [WithheldField(field=k, code=v) for k, v in sorted(root.fields_withheld.items())]


@strawberry.type
class MyAccessEdge:
    cursor: str
    node: MyAccess


@strawberry.type
class MyAccessConnection:
    edges: list[MyAccessEdge]
    page_info: PageInfo


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

    @strawberry.field
    async def address(self, root: strawberry.Parent[MemberRecord], info: Info) -> Address:
        return cast(Address, await resolve.address(info.context, root))


@strawberry.type(description="Everything Tillit holds about you, and everything done with it.")
class Me:
    @strawberry.field
    def id(self, root: strawberry.Parent[MemberRecord]) -> strawberry.ID:
        return strawberry.ID(str(root.id))

    @strawberry.field
    def profile(self, root: strawberry.Parent[MemberRecord]) -> MyProfile:
        return cast(MyProfile, root)

    @strawberry.field(description="Values from data brokers, each with its source and consent.")
    async def enriched(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[MyEnrichedValue]:
        return cast(list[MyEnrichedValue], await resolve.enriched(info.context, root.id))

    @strawberry.field(description="Where you stand with each purpose that needs your consent.")
    async def consents(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[ConsentStatus]:
        return cast(list[ConsentStatus], await resolve.consents(info.context, root.id))

    @strawberry.field(description="Every consent change, oldest first, with receipt ids.")
    async def consent_history(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[MyConsentEvent]:
        return cast(list[MyConsentEvent], await resolve.consent_history(info.context, root.id))

    @strawberry.field(description="Corrections from registers. Reading them marks them delivered.")
    async def notices(self, root: strawberry.Parent[MemberRecord], info: Info) -> list[MyNotice]:
        return cast(list[MyNotice], await resolve.notices(info.context, root.id))

    @strawberry.field
    async def objections(
        self, root: strawberry.Parent[MemberRecord], info: Info
    ) -> list[MyObjection]:
        return cast(list[MyObjection], await resolve.objections(info.context, root.id))

    @strawberry.field(description="Who used your data, when and why; newest first.")
    async def access_log(
        self,
        root: strawberry.Parent[MemberRecord],
        info: Info,
        first: int = 20,
        after: str | None = None,
    ) -> MyAccessConnection:
        page = await resolve.access_history(info.context, root.id, first=first, after=after)
        edges = [MyAccessEdge(cursor=e.cursor, node=cast(MyAccess, e)) for e in page.entries]
        return MyAccessConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
            ),
        )


def export_json(document: dict[str, Any]) -> Any:
    """The document as GraphQL's JSON scalar carries it."""
    return json.loads(json.dumps(document))
