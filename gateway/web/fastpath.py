"""A direct execution of the most common operation: one `member` or `members` field with leaf
fields only (`{ member(id: $id, purpose: $p) { id tier incomeBand } }`).

graphql-core's executor is general: for each request it builds an execution context, walks the
selection, wraps every resolver and completes every value. For a prepared document of this one
shape, the plan (which fields, under which response keys, serialised how) is made once, and a
request coerces its variables and arguments with graphql-core's own functions, runs the same
resolver code (`resolvers.members.read_members`: decision and audit are untouched) and serialises
each value with the field's own GraphQL type. A `members` read goes further: one statement
decides, audits and writes each member's answer as JSON text (`resolvers.members.read_set`,
gateway.records.set_reads), spliced into the response as it is. The result and its errors are
what graphql-core would produce, and so are the access events; `tests/gateway/web/
test_fastpath.py` runs generated operations through both and compares them. Anything else
(fragments, directives, nested objects, several root fields, variables that do not coerce)
returns None and takes the general path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    VariableDefinitionNode,
    get_named_type,
    is_leaf_type,
    located_error,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from graphql.type.scalars import (
    GRAPHQL_MAX_INT,
    GRAPHQL_MIN_INT,
    serialize_boolean,
    serialize_id,
    serialize_int,
    serialize_string,
)

from gateway.access.policy import basis_codes, decided, withheld_for
from gateway.domain import Category, Purpose
from gateway.errors import AuditUnavailable, NotFound
from gateway.records import set_reads
from resolvers.context import Context
from resolvers.members import MemberView, read_member, read_members, read_set
from schema.by_nodes import ByNodes
from schema.query import MEMBER_FIELD_CATEGORIES, member_field_errors

_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class Leaf:
    node: FieldNode  # the selection (for an error's location and the field's name)
    key: str  # the response key (alias or name)
    attribute: str | None  # the value's name in the view; None for __typename
    serialize: Callable[[Any], Any]
    many: bool  # a list of scalars
    non_null: bool


@dataclass(frozen=True, slots=True)
class MemberPlan:
    operation: OperationDefinitionNode
    node: FieldNode
    field: GraphQLField
    key: str
    many: bool
    leaves: tuple[Leaf, ...]
    fields: Mapping[str, Category]
    keys: Mapping[str, list[str]]
    text_variables: tuple[tuple[str, bool], ...] | None
    # The leaves as the set-based read answers them (gateway.records.set_reads), when it can.
    set_leaves: tuple[set_reads.Leaf, ...] | None = None


def leaf(
    schema: GraphQLSchema, node: FieldNode, python_names: Mapping[str, str], type_name: str
) -> Leaf | None:
    """How to answer one selected field of `type_name` from a view's attribute, if it is a leaf
    without arguments or directives that the view holds (see python_names); else None."""
    object_type = schema.get_type(type_name)
    if not isinstance(object_type, GraphQLObjectType) or node.directives:
        return None
    key = node.alias.value if node.alias else node.name.value
    if node.name.value == "__typename":
        return Leaf(node, key, None, lambda _: type_name, many=False, non_null=True)
    definition = object_type.fields.get(node.name.value)
    if definition is None or node.selection_set is not None or node.arguments:
        return None
    type_ = definition.type
    non_null = isinstance(type_, GraphQLNonNull)
    if non_null:
        type_ = type_.of_type
    many = isinstance(type_, GraphQLList)
    if many:
        inner = type_.of_type
        if not isinstance(inner, GraphQLNonNull):
            return None  # a list of nullable items: leave it to the general path
        type_ = inner.of_type
    named = get_named_type(type_)
    if not is_leaf_type(named):
        return None
    attribute = python_names.get(node.name.value)
    if attribute is None:
        return None
    assert isinstance(named, GraphQLScalarType | GraphQLEnumType)
    return Leaf(node, key, attribute, _serializer(named), many=many, non_null=non_null)


def _serializer(named: GraphQLScalarType | GraphQLEnumType) -> Callable[[Any], Any]:
    """The type's own `serialize`, with the values a profile holds answered directly: each
    shortcut gives what graphql-core's serializer gives for that exact type (a str is its own
    String or ID, an ID of a UUID is its text, an Int in range is itself, an enum member is
    the name whose value it has), and anything else goes to the serializer."""
    general = named.serialize
    if general is serialize_id:

        def id_(value: Any) -> Any:
            if type(value) is str:
                return value
            return str(value) if isinstance(value, uuid.UUID) else general(value)

        return id_
    if general is serialize_string:
        return lambda value: value if type(value) is str else general(value)
    if general is serialize_boolean:
        return lambda value: value if type(value) is bool else general(value)
    if general is serialize_int:
        return lambda value: (
            value
            if type(value) is int and GRAPHQL_MIN_INT <= value <= GRAPHQL_MAX_INT
            else general(value)
        )
    wrapped = getattr(named, "wrapped_cls", None)  # a Strawberry enum
    if (
        isinstance(named, GraphQLEnumType)
        and isinstance(wrapped, type)
        and issubclass(wrapped, Enum)
    ):
        names: dict[Any, str] = {}
        for member in wrapped:
            for name, value in named.values.items():
                if member.value == value.value:
                    names[member] = name
                    break
        return lambda value: (
            names[value] if type(value) is wrapped and value in names else general(value)
        )
    return general


_TEXT_TYPES = frozenset({"String", "ID"})


def text_variables(
    definitions: tuple[VariableDefinitionNode, ...] | None,
) -> tuple[tuple[str, bool], ...] | None:
    """When every variable is declared `String!`/`ID!` or `[String!]!`/`[ID!]!` without a
    default: each one's name and whether it is a list. Otherwise None. Made once per plan."""
    if not definitions:
        return None
    plain: list[tuple[str, bool]] = []
    for definition in definitions:
        type_ = definition.type
        if definition.default_value is not None or not isinstance(type_, NonNullTypeNode):
            return None
        inner = type_.type
        if isinstance(inner, ListTypeNode):
            item = inner.type
            if not isinstance(item, NonNullTypeNode):
                return None
            inner = item.type
            many = True
        else:
            many = False
        if not isinstance(inner, NamedTypeNode) or inner.name.value not in _TEXT_TYPES:
            return None
        plain.append((definition.variable.name.value, many))
    return tuple(plain)


def plain_variables(
    declared: tuple[tuple[str, bool], ...] | None, given: dict[str, Any] | None
) -> VariableValues | None:
    """The variables as graphql-core would coerce them, when that is to take them as they are:
    each text variable (see text_variables) given a str, each list of them a list of str.
    Otherwise None, and graphql-core coerces (and reports what does not coerce)."""
    if declared is None or given is None:
        return None
    plain: dict[str, Any] = {}
    for name, many in declared:
        value = given.get(name)
        if many:
            if type(value) is not list or not all(type(element) is str for element in value):
                return None
            plain[name] = list(value)
        elif type(value) is str:
            plain[name] = value
        else:
            return None
    return VariableValues({}, plain)  # no sources: those serve defaults and fragment variables


def root_leaves(
    operation: OperationDefinitionNode,
    kind: OperationType,
    leaves_of: Callable[[FieldNode], Leaf | None],
    roots: Collection[str],
) -> tuple[FieldNode, tuple[Leaf, ...]] | None:
    """The operation's one root field and how to answer each of its selections, when it is of
    `kind`, its root is one of `roots`, and every selection is a leaf `leaves_of` answers;
    otherwise None. Directives anywhere on the way also give None."""
    if operation.operation is not kind or operation.directives:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    node = selections[0]
    if node.name.value not in roots or node.directives or node.selection_set is None:
        return None
    leaves = []
    for selection in node.selection_set.selections:
        if not isinstance(selection, FieldNode):
            return None
        found = leaves_of(selection)
        if found is None:
            return None
        leaves.append(found)
    return node, tuple(leaves)


class RootPlan(Protocol):
    """What a direct executor's plan knows of its operation's one root field."""

    @property
    def operation(self) -> OperationDefinitionNode: ...
    @property
    def field(self) -> GraphQLField: ...
    @property
    def node(self) -> FieldNode: ...
    @property
    def text_variables(self) -> tuple[tuple[str, bool], ...] | None: ...


def field_arguments(
    schema: GraphQLSchema,
    plan: RootPlan,
    variables: dict[str, Any] | None,
    *,
    hide_suggestions: bool,
) -> dict[str, Any] | None:
    """The root field's arguments as graphql-core coerces them (variables first: see
    plain_variables), or None when something does not coerce (the general path says what)."""
    coerced: VariableValues | list[GraphQLError] | None = plain_variables(
        plan.text_variables, variables
    )
    if coerced is None:
        coerced = get_variable_values(
            schema,
            plan.operation.variable_definitions or (),
            variables or {},
            max_errors=50,
            hide_suggestions=hide_suggestions,
        )
    if isinstance(coerced, list):
        return None
    try:
        return get_argument_values(
            plan.field, plan.node, coerced, hide_suggestions=hide_suggestions
        )
    except GraphQLError:
        return None


class FastPath:
    """Plans by prepared document; `run` executes one, or returns None for the general path."""

    def __init__(self, schema: GraphQLSchema, python_names: Mapping[str, str]) -> None:
        self.schema = schema
        self.python_names = python_names
        self._plans: ByNodes[MemberPlan | None] = ByNodes(_CACHE_SIZE)

    def plan(
        self, document: DocumentNode, operation: OperationDefinitionNode | None, name: str | None
    ) -> MemberPlan | None:
        return self._plans.get(
            (document,), name, lambda: self._make(operation) if operation is not None else None
        )

    def _make(self, operation: OperationDefinitionNode) -> MemberPlan | None:
        found = root_leaves(
            operation,
            OperationType.QUERY,
            lambda selection: leaf(self.schema, selection, self.python_names, "Member"),
            ("member", "members"),
        )
        if found is None:
            return None
        node, leaves = found
        fields: dict[str, Category] = {}
        keys: dict[str, list[str]] = {}
        for one in leaves:
            if one.attribute in MEMBER_FIELD_CATEGORIES:
                fields[one.attribute] = MEMBER_FIELD_CATEGORIES[one.attribute]
                keys.setdefault(one.attribute, []).append(one.key)
        query_type = self.schema.query_type
        assert query_type is not None
        return MemberPlan(
            operation=operation,
            node=node,
            field=query_type.fields[node.name.value],
            key=node.alias.value if node.alias else node.name.value,
            many=node.name.value == "members",
            leaves=leaves,
            fields=fields,
            keys=keys,
            text_variables=text_variables(operation.variable_definitions),
            # `members` only: a one-member read's commit goes in with other reads' (the group
            # commit), which measured cheaper than a statement of its own (S1: 0.57 + 0.31 against
            # 0.71 + 0.50 ms of CPU a read, server + PostgreSQL).
            set_leaves=(
                tuple(set_reads.Leaf(one.key, one.attribute) for one in leaves)
                if node.name.value == "members"
                and all(set_reads.answers(one.attribute) for one in leaves)
                else None
            ),
        )

    async def run(
        self,
        plan: MemberPlan,
        context: Context,
        variables: dict[str, Any] | None,
        *,
        hide_suggestions: bool,
    ) -> ExecutionResult | None:
        arguments = field_arguments(self.schema, plan, variables, hide_suggestions=hide_suggestions)
        if arguments is None:
            return None  # the general path reports what does not coerce
        errors: list[GraphQLError] = []
        if plan.set_leaves is not None:
            return await self._run_set(plan, plan.set_leaves, context, arguments)
        try:
            if plan.many:
                views = await read_members(
                    context,
                    member_ids=arguments["ids"],
                    purpose=arguments["purpose"],
                    fields=plan.fields,
                    operation="members",
                    direct=True,
                )
                value: Any = []
                for position, view in enumerate(views):
                    if isinstance(view, Exception):
                        errors.append(located_error(view, [plan.node], [plan.key, position]))
                        value.append(None)
                    else:
                        value.append(self._member(plan, context, view, [plan.key, position]))
            else:
                view = await read_member(
                    context,
                    member_id=arguments["id"],
                    purpose=arguments["purpose"],
                    fields=plan.fields,
                    direct=True,
                )
                value = self._member(plan, context, view, [plan.key])
        except Exception as failed:
            return _failed(plan, failed)
        return ExecutionResult({plan.key: value}, errors or None)

    async def _run_set(
        self,
        plan: MemberPlan,
        leaves: tuple[set_reads.Leaf, ...],
        context: Context,
        arguments: dict[str, Any],
    ) -> ExecutionResult:
        """A `members` read as one statement (gateway.records.set_reads): each member's answer
        is JSON text PostgreSQL wrote, spliced in as it is; withheld fields reported as
        `_member` reports them, an unknown id as `run` does."""
        try:
            found = await read_set(
                context,
                member_ids=arguments["ids"],
                purpose=arguments["purpose"],
                fields=plan.fields,
                leaves=leaves,
                operation="members",
            )
        except AuditUnavailable:
            raise  # the operation fails whole, as the boundary answers it (fail closed)
        except Exception as failed:
            return _failed(plan, failed)
        errors: list[GraphQLError] = []
        withheld = _withheld_errors(plan, found.purpose)
        append = context.field_errors.append
        value: list[Any] = []
        for row in found.rows:
            path: list[str | int] = [plan.key, row.position]
            if row.data is None:
                missing = NotFound("No member has this id.", argument="id")
                errors.append(located_error(missing, [plan.node], path))
                value.append(None)
                continue
            value.append(orjson.Fragment(row.data))
            for message, key, extensions in withheld[row.code]:
                append({"message": message, "path": [*path, key], "extensions": extensions})
        return ExecutionResult({plan.key: value}, errors or None)

    @staticmethod
    def _member(
        plan: MemberPlan, context: Context, view: MemberView, path: list[str | int]
    ) -> dict[str, Any]:
        member_field_errors(context, view, plan.keys, path)
        values = view.values
        result: dict[str, Any] = {}
        for leaf in plan.leaves:
            if leaf.key in result:
                continue  # the same field asked twice under one key (validation allows it)
            if leaf.attribute is None:
                result[leaf.key] = "Member"
                continue
            attribute = leaf.attribute
            raw: Any = (
                view.id
                if attribute == "id"
                else view.purpose
                if attribute == "purpose"
                else values.get(attribute)
            )
            if raw is None:
                result[leaf.key] = None
            elif leaf.many:
                result[leaf.key] = [leaf.serialize(item) for item in raw]
            else:
                result[leaf.key] = leaf.serialize(raw)
        return result


def _failed(plan: MemberPlan, failed: Exception) -> ExecutionResult:
    """The field null, with its error: a refusal as its code says, anything else as
    graphql-core locates an unexpected error (the endpoint then decides what it means)."""
    return ExecutionResult({plan.key: None}, [located_error(failed, [plan.node], [plan.key])])


def _withheld_errors(
    plan: MemberPlan, purpose: Purpose
) -> dict[str | None, list[tuple[str, str, dict[str, Any]]]]:
    """For each reason a member's basis can fail (None: it holds), the errors of the fields it
    withholds, in the order `member_field_errors` reports a view's: (message, response key,
    extensions), the extensions shared as the decision shares its reasons."""
    by_code: dict[str | None, list[tuple[str, str, dict[str, Any]]]] = {}
    for code in (None, *basis_codes(purpose)):
        failure = None if code is None else withheld_for(purpose, code)
        decision = decided(purpose, plan.fields, failure)
        extensions_of: dict[int, dict[str, Any]] = {}
        entries: list[tuple[str, str, dict[str, Any]]] = []
        for name, reason in decision.withheld.items():
            extensions = extensions_of.get(id(reason))
            if extensions is None:
                extensions = extensions_of[id(reason)] = {
                    "code": reason.code.value,
                    "purpose": purpose.key,
                    **reason.hints,
                }
            entries.extend((reason.message, key, extensions) for key in plan.keys.get(name, ()))
        by_code[None if code is None else code.value] = entries
    return by_code
