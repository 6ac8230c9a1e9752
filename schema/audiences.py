"""GraphQL types of an audience: the filter a campaign selects with, and the page of members."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import strawberry

from gateway.records.audiences import Selection
from schema.audit import PageInfo
from schema.enums import Tier
from schema.types import Member


@strawberry.input(
    description="Which members of the purpose's audience to take; all given conditions must "
    "hold, and a list matches any of its values. Each condition reads a member field, and may "
    "name only a field the purpose releases (else CATEGORY_NOT_IN_PURPOSE): who is selected "
    "must not reveal a value the purpose withholds."
)
class AudienceFilter:
    tier: list[Tier] | None = strawberry.field(default=None, description="Membership tiers.")
    member_since_from: dt.date | None = strawberry.field(
        default=None, description="Joined on or after this date."
    )
    member_since_to: dt.date | None = strawberry.field(
        default=None, description="Joined on or before this date."
    )
    postal_code_prefix: list[str] | None = strawberry.field(
        default=None, description="Postal codes that start with one of these (address)."
    )
    country: list[str] | None = strawberry.field(
        default=None, description="ISO 3166-1 alpha-2 codes (address)."
    )
    income_band: list[str] | None = strawberry.field(
        default=None, description="Household income bands (enriched demographics)."
    )
    household_size_min: int | None = strawberry.field(
        default=None, description="At least this many in the household (enriched demographics)."
    )
    household_size_max: int | None = strawberry.field(
        default=None, description="At most this many in the household (enriched demographics)."
    )
    lifestyle_segment: list[str] | None = strawberry.field(
        default=None, description="Lifestyle segments (enriched lifestyle)."
    )
    interests: list[str] | None = strawberry.field(
        default=None, description="Has at least one of these interests (enriched lifestyle)."
    )


def selection_of(where: AudienceFilter | None) -> Selection:
    """The selection a filter describes (its values are checked by `Selection.check`)."""
    if where is None:
        return Selection()
    return Selection(
        tiers=tuple(where.tier or ()),
        member_since_from=where.member_since_from,
        member_since_to=where.member_since_to,
        postal_code_prefixes=tuple(where.postal_code_prefix or ()),
        countries=tuple(where.country or ()),
        income_bands=tuple(where.income_band or ()),
        household_size_min=where.household_size_min,
        household_size_max=where.household_size_max,
        lifestyle_segments=tuple(where.lifestyle_segment or ()),
        interests=tuple(where.interests or ()),
    )


@strawberry.type(description="One member of an audience page.")
class MemberEdge:
    cursor: str = strawberry.field(description="Give it as `after` for the members after this one.")
    node: SimpleNamespace = strawberry.field(graphql_type=Member)


@strawberry.type(description="A page of an audience, by member id.")
class MemberConnection:
    edges: list[MemberEdge]
    page_info: PageInfo
