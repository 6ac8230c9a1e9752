"""The root query type."""

from __future__ import annotations

from typing import Any, cast

import strawberry
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from gateway.domain import Category
from resolvers.context import Context
from resolvers.members import read_member, read_members
from resolvers.purposes import list_purposes
from schema.categories import categories_of, graphql_names_of
from schema.types import Member, Purpose

Info = strawberry.Info[Context, None]

MEMBER_FIELD_CATEGORIES = categories_of(Member)
_MEMBER_FIELD_NAMES = graphql_names_of(Member)


def _flatten(selections: list[Selection]) -> list[SelectedField]:
    fields: list[SelectedField] = []
    for selection in selections:
        if isinstance(selection, SelectedField):
            fields.append(selection)
        elif isinstance(selection, FragmentSpread | InlineFragment):
            fields.extend(_flatten(selection.selections))
    return fields


def requested_member_fields(info: Info) -> dict[str, Category]:
    """The gated Member fields this operation asks for, with their categories."""
    requested: dict[str, Category] = {}
    for root in info.selected_fields:
        for selected in _flatten(root.selections):
            python_name = _MEMBER_FIELD_NAMES.get(selected.name)
            if python_name in MEMBER_FIELD_CATEGORIES:
                requested[python_name] = MEMBER_FIELD_CATEGORIES[python_name]
    return requested


@strawberry.type
class Query:
    @strawberry.field(description="Every purpose in force, in plain language. Public.")
    async def purposes(self, info: Info) -> list[Purpose]:
        result: list[Any] = await list_purposes(info.context)
        return result

    @strawberry.field(
        description="One member's profile, as released to the caller under `purpose`."
    )
    async def member(
        self,
        info: Info,
        id: strawberry.ID,  # the contract's argument name
        purpose: str,
    ) -> Member | None:
        view = await read_member(
            info.context, member_id=id, purpose=purpose, fields=requested_member_fields(info)
        )
        # Member's fields resolve from the view: gated ones through the access decision's result.
        return cast(Member, view)

    @strawberry.field(
        description="Up to 100 members' profiles under `purpose`, in the order asked. An unknown "
        "id is null in its position, with a NOT_FOUND error at that path."
    )
    async def members(
        self,
        info: Info,
        ids: list[strawberry.ID],
        purpose: str,
    ) -> list[Member | None] | None:
        views = await read_members(
            info.context,
            member_ids=ids,
            purpose=purpose,
            fields=requested_member_fields(info),
            operation="members",
        )
        # A TillitError in a position becomes a located error for that item (graphql-core).
        return cast(list[Member | None] | None, views)
