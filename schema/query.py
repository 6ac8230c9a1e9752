"""The root query type."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Annotated

import strawberry
from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField, Selection

from gateway import domain
from gateway.domain import Category
from gateway.records.members import MemberRecord
from resolvers import audit
from resolvers import me as resolve_me
from resolvers.audiences import audience as resolve_audience
from resolvers.context import Context
from resolvers.members import MemberView, read_member, read_members
from resolvers.purposes import list_purposes
from schema.audiences import AudienceFilter, MemberConnection, MemberEdge, selection_of
from schema.audit import (
    AccessEventConnection,
    AccessEventEdge,
    AccessLogFilter,
    PageInfo,
    TransparencyReport,
    counts,
    log_filter,
)
from schema.by_nodes import ByNodes
from schema.categories import categories_of, graphql_names_of, released
from schema.me import Me
from schema.types import Member, Purpose

Info = strawberry.Info[Context, None]

MEMBER_FIELD_CATEGORIES = categories_of(Member)
_MEMBER_FIELD_NAMES = graphql_names_of(Member)


def _included(selection: Selection) -> bool:
    """What `@skip` and `@include` say of a selection (their `if` already has its value)."""
    directives = selection.directives
    if not directives:
        return True
    if directives.get("skip", {}).get("if") is True:
        return False
    return directives.get("include", {}).get("if") is not False


def _flatten(selections: list[Selection], seen: list[bool]) -> list[SelectedField]:
    """The fields selected, through fragments, leaving out what `@skip`/`@include` leave out.
    `seen` gets a True when a directive decided something (the answer then depends on the
    request's variables)."""
    fields: list[SelectedField] = []
    for selection in selections:
        if selection.directives:
            seen.append(True)
            if not _included(selection):
                continue
        if isinstance(selection, SelectedField):
            fields.append(selection)
        elif isinstance(selection, FragmentSpread | InlineFragment):
            fields.extend(_flatten(selection.selections, seen))
    return fields


Requested = tuple[dict[str, Category], dict[str, list[str]]]
# By the field's AST nodes: the same prepared query asks the same fields every time, unless a
# directive's condition (a variable) decides; the bool says so.
_REQUESTED: ByNodes[tuple[Requested, bool]] = ByNodes(1024)


def requested_member_fields(info: Info) -> Requested:
    """The gated Member fields this operation asks for, with their categories, and the response
    keys (aliases) each one is asked under. A field left out by `@skip`/`@include` is not asked
    for: it is neither decided nor audited."""
    nodes = tuple(info._raw_info.field_nodes)
    requested, conditional = _REQUESTED.get(nodes, None, lambda: _requested_member_fields(info))
    return _requested_member_fields(info)[0] if conditional else requested


def _requested_member_fields(info: Info) -> tuple[Requested, bool]:
    requested: dict[str, Category] = {}
    keys: dict[str, list[str]] = {}
    seen: list[bool] = []
    for root in info.selected_fields:
        _collect(root.selections, seen, requested, keys)
    return (requested, keys), bool(seen)


def _collect(
    selections: list[Selection],
    seen: list[bool],
    requested: dict[str, Category],
    keys: dict[str, list[str]],
) -> None:
    """Add the gated Member fields among `selections` to `requested`, and their keys."""
    for selected in _flatten(selections, seen):
        python_name = _MEMBER_FIELD_NAMES.get(selected.name)
        if python_name in MEMBER_FIELD_CATEGORIES:
            requested[python_name] = MEMBER_FIELD_CATEGORIES[python_name]
            keys.setdefault(python_name, []).append(selected.alias or selected.name)


# The gated Member fields a connection asks under `edges { node { ... } }`, and for each
# response key of `edges` and of `node` within it, the keys each field is asked under there.
Paths = list[tuple[str, str, dict[str, list[str]]]]
_REQUESTED_NODES: ByNodes[tuple[tuple[dict[str, Category], Paths], bool]] = ByNodes(256)


def requested_node_fields(info: Info) -> tuple[dict[str, Category], Paths]:
    """As `requested_member_fields`, for a connection of members."""
    nodes = tuple(info._raw_info.field_nodes)
    requested, conditional = _REQUESTED_NODES.get(nodes, None, lambda: _requested_node_fields(info))
    return _requested_node_fields(info)[0] if conditional else requested


def _requested_node_fields(info: Info) -> tuple[tuple[dict[str, Category], Paths], bool]:
    requested: dict[str, Category] = {}
    paths: dict[tuple[str, str], dict[str, list[str]]] = {}
    seen: list[bool] = []
    for root in info.selected_fields:
        for edges in _flatten(root.selections, seen):
            if edges.name != "edges":
                continue
            for node in _flatten(edges.selections, seen):
                if node.name == "node":
                    keys = paths.setdefault(
                        (edges.alias or edges.name, node.alias or node.name), {}
                    )
                    _collect(node.selections, seen, requested, keys)
    return (requested, [(e, n, keys) for (e, n), keys in paths.items()]), bool(seen)


def member_field_errors(
    context: Context, view: MemberView, keys: Mapping[str, list[str]], path: list[str | int]
) -> None:
    """One error per withheld field at its path, reported beside the data (not raised: no
    per-field resolver, no exception per field)."""
    append = context.field_errors.append
    # One extensions object per reason and purpose in the whole operation: the decision shares a
    # Withheld between the fields a failed legal basis withholds and between the members decided
    # alike, and the response may share it too (it is only serialised). The Withheld is kept
    # beside its extensions, so its id is not reused while the entry lives.
    known = context.withheld_extensions
    for name, withheld in view.withheld.items():
        found = known.get((id(withheld), view.purpose))
        if found is None:
            extensions = {"code": withheld.code.value, "purpose": view.purpose, **withheld.hints}
            known[(id(withheld), view.purpose)] = (withheld, extensions)
        else:
            extensions = found[1]
        for key in keys.get(name, ()):
            append({"message": withheld.message, "path": [*path, key], "extensions": extensions})


def _release(
    info: Info, view: MemberView, keys: dict[str, list[str]], position: int | None = None
) -> SimpleNamespace:
    """The object GraphQL resolves the member from, and the errors of its withheld fields."""
    base = info.path.as_list() if position is None else [*info.path.as_list(), position]
    member_field_errors(info.context, view, keys, base)
    return released(MEMBER_FIELD_CATEGORIES, view.id, view.purpose, view.values)


@strawberry.type
class Query:
    @strawberry.field(
        description="Every purpose in force, in plain language. Public.",
        graphql_type=list[Purpose],
    )
    async def purposes(self, info: Info) -> list[domain.Purpose]:
        return await list_purposes(info.context)

    @strawberry.field(
        description="One member's profile, as released to the caller under `purpose`.",
        graphql_type=Member | None,
    )
    async def member(
        self,
        info: Info,
        id: strawberry.ID,  # the contract's argument name
        purpose: str,
    ) -> SimpleNamespace:
        fields, keys = requested_member_fields(info)
        view = await read_member(info.context, member_id=id, purpose=purpose, fields=fields)
        return _release(info, view, keys)

    @strawberry.field(
        description="Up to 100 members' profiles under `purpose`, in the order asked. An unknown "
        "id is null in its position, with a NOT_FOUND error at that path.",
        graphql_type=list[Member | None] | None,
    )
    async def members(
        self,
        info: Info,
        ids: list[strawberry.ID],
        purpose: str,
    ) -> list[SimpleNamespace | Exception]:
        fields, keys = requested_member_fields(info)
        views = await read_members(
            info.context, member_ids=ids, purpose=purpose, fields=fields, operation="members"
        )
        # A TillitError in a position becomes a located error for that item (graphql-core).
        return [
            view if isinstance(view, Exception) else _release(info, view, keys, position)
            for position, view in enumerate(views)
        ]

    @strawberry.field(
        description="Your own data and its history (member token only). Reading it is audited.",
        graphql_type=Me | None,
    )
    async def me(self, info: Info) -> MemberRecord:
        parts = [
            selected.name
            for root in info.selected_fields
            for selected in root.selections
            if isinstance(selected, SelectedField)
        ]
        return await resolve_me.me(info.context, parts=parts)

    @strawberry.field(
        description="The members `purpose` may reach now: those for whom its legal basis holds "
        "at this moment (a valid consent, an active membership, no objection), taken by `where` "
        "on fields the purpose releases, in member-id order; `after` a cursor of the page "
        "before. Each member's fields are released as in `members`, and each member on the page "
        "is audited (operation `audience`). Needs the `audience` capability."
    )
    async def audience(
        self,
        info: Info,
        purpose: str,
        where: AudienceFilter | None = None,
        first: int = 100,
        after: str | None = None,
    ) -> MemberConnection | None:
        fields, paths = requested_node_fields(info)
        result = await resolve_audience(
            info.context,
            purpose=purpose,
            selection=selection_of(where),
            fields=fields,
            first=first,
            after=after,
        )
        base = info.path.as_list()
        edges = []
        for position, entry in enumerate(result.entries):
            view = entry.view
            for edges_key, node_key, keys in paths:
                member_field_errors(
                    info.context, view, keys, [*base, edges_key, position, node_key]
                )
            node = released(MEMBER_FIELD_CATEGORIES, view.id, view.purpose, view.values)
            edges.append(MemberEdge(cursor=entry.cursor, node=node))
        return MemberConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=result.has_next_page,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )

    @strawberry.field(
        description="The access log, newest first (auditors only). Reading it is itself audited."
    )
    async def access_log(
        self,
        info: Info,
        filter: AccessLogFilter | None = None,  # the contract's argument name
        first: int = 50,
        after: str | None = None,
    ) -> AccessEventConnection | None:
        page = await audit.access_log(
            info.context,
            where=log_filter(filter, audit.parse_optional_uuid),
            first=first,
            after=after,
        )
        edges = [AccessEventEdge(cursor=entry.cursor, node=entry) for entry in page.entries]
        return AccessEventConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )

    @strawberry.field(description="What happened to members' data in [from, to) (auditors only).")
    async def transparency_report(
        self,
        info: Info,
        from_: Annotated[dt.datetime, strawberry.argument(name="from")],
        to: dt.datetime,
    ) -> TransparencyReport | None:
        report = await audit.transparency_report(info.context, start=from_, end=to)
        return TransparencyReport(
            from_=report.start,
            to=report.end,
            accesses=report.accesses,
            accesses_by_purpose=counts(report.by_purpose),
            accesses_by_client=counts(report.by_client),
            accesses_by_outcome=counts(report.by_outcome),
            withheld_reasons=counts(report.withheld_reasons),
            consents_granted=counts(report.consents_granted),
            consents_withdrawn=counts(report.consents_withdrawn),
            consents_expired=counts(report.consents_expired),
            enrichment_records=report.enrichment_records,
            cleansing_records=report.cleansing_records,
            objections=report.objections,
            notices_overdue=report.notices_overdue,
        )
