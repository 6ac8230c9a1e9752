"""Preparing a GraphQL document once: parse, validate, and hold it to the operation limits.

A document is parsed with a token cap, validated by the specification's rules (plus no
introspection outside dev mode, and no "did you mean" suggestions there), and then measured:
nesting depth, aliases, root fields, and an estimated cost. The outcome, good or bad, is kept in
a bounded cache keyed by the document's text, so a document an app sends a million times is
prepared once; executing it is graphql-core's `execute` on the prepared document, with no
per-request extension machinery around it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import graphql
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
    get_named_type,
    parse,
    specified_rules,
    validate,
)
from graphql.validation import NoSchemaIntrospectionCustomRule

from gateway.domain import ErrorCode

# The multiplier for a list field whose size no argument bounds.
UNBOUNDED_LIST_ESTIMATE = 10
CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int = 8
    max_aliases: int = 20
    max_tokens: int = 2_000
    max_root_fields: int = 5
    max_list_size: int = 100
    max_cost: int = 25_000
    introspection: bool = False
    suggestions: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a document cannot run: the errors as the caller sees them."""

    errors: list[dict[str, Any]]


def limit_error(message: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": ErrorCode.OPERATION_LIMIT_EXCEEDED.value}}


def graphql_error(error: GraphQLError, code: ErrorCode) -> dict[str, Any]:
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [
            {"line": loc.line, "column": loc.column} for loc in error.locations
        ]
    formatted["extensions"] = {"code": code.value}
    return formatted


@dataclass(frozen=True, slots=True)
class Measure:
    depth: int
    aliases: int
    root_fields: int
    cost: int


def _is_object_list(type_: Any, node: FieldNode) -> bool:
    """A list of objects multiplies what is below it; a list of scalars is one value."""
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    return isinstance(type_, GraphQLList) and node.selection_set is not None


class _Measurer:
    """Walks one operation with the schema's types at hand, fragments expanded."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        limits: Limits,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.limits = limits
        self.aliases = 0
        self.cost = 0
        self.depth = 0

    def fields(
        self, selections: SelectionSetNode, parent: GraphQLObjectType | None, seen: frozenset[str]
    ) -> Iterable[tuple[FieldNode, GraphQLObjectType | None]]:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                yield selection, parent
            elif isinstance(selection, InlineFragmentNode):
                on = parent
                if selection.type_condition is not None:
                    named = self.schema.get_type(selection.type_condition.name.value)
                    on = named if isinstance(named, GraphQLObjectType) else None
                yield from self.fields(selection.selection_set, on, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:  # validation has refused both already
                    continue
                named = self.schema.get_type(fragment.type_condition.name.value)
                on = named if isinstance(named, GraphQLObjectType) else None
                yield from self.fields(fragment.selection_set, on, seen | {name})

    def walk(
        self,
        selections: SelectionSetNode,
        parent: GraphQLObjectType | None,
        depth: int,
        multiplier: int,
        page: int | None = None,
    ) -> None:
        """`page` is the `first` of a connection above, which bounds the lists inside it."""
        self.depth = max(self.depth, depth)
        for node, owner in self.fields(selections, parent, frozenset()):
            name = node.name.value
            if node.alias is not None:
                self.aliases += 1
            if name.startswith("__"):
                continue  # __typename is free; introspection has its own depth rule
            definition = owner.fields.get(name) if owner is not None else None
            bound = self.argument_bound(node)
            is_list = definition is not None and _is_object_list(definition.type, node)
            size = multiplier * ((bound or page or UNBOUNDED_LIST_ESTIMATE) if is_list else 1)
            self.cost += size
            if node.selection_set is not None:
                child = get_named_type(definition.type) if definition else None
                self.walk(
                    node.selection_set,
                    child if isinstance(child, GraphQLObjectType) else None,
                    depth + 1,
                    size,
                    None if is_list else bound,
                )

    def argument_bound(self, node: FieldNode) -> int | None:
        for argument in node.arguments or ():
            if argument.name.value in ("ids", "first"):
                return max(1, self.bounded(argument.value))
        return None

    def bounded(self, value: ValueNode) -> int:
        if isinstance(value, ListValueNode):
            return len(value.values)
        if isinstance(value, IntValueNode):
            return min(int(value.value), self.limits.max_list_size)
        if isinstance(value, VariableNode):
            return self.limits.max_list_size
        return 1


def measure(schema: GraphQLSchema, document: DocumentNode, limits: Limits) -> dict[str, Measure]:
    """Depth, aliases, root fields and cost of each operation in the document."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    measures = {}
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        root = schema.get_root_type(definition.operation)
        walker = _Measurer(schema, fragments, limits)
        walker.walk(definition.selection_set, root, 1, 1)
        root_fields = sum(1 for _ in walker.fields(definition.selection_set, root, frozenset()))
        name = definition.name.value if definition.name else ""
        measures[name] = Measure(walker.depth, walker.aliases, root_fields, walker.cost)
    return measures


def _over_limits(measures: Mapping[str, Measure], limits: Limits) -> list[dict[str, Any]]:
    errors = []
    for m in measures.values():
        if m.depth > limits.max_depth:
            errors.append(
                limit_error(f"The operation nests {m.depth} deep; the limit is {limits.max_depth}.")
            )
        if m.aliases > limits.max_aliases:
            errors.append(
                limit_error(
                    f"The operation uses {m.aliases} aliases; the limit is {limits.max_aliases}."
                )
            )
        if m.root_fields > limits.max_root_fields:
            errors.append(
                limit_error(
                    f"The operation asks for {m.root_fields} top-level fields; "
                    f"the limit is {limits.max_root_fields}."
                )
            )
        if m.cost > limits.max_cost:
            errors.append(
                limit_error(
                    f"The operation's estimated cost is {m.cost}; the limit is {limits.max_cost}."
                )
            )
        if errors:
            break
    return errors


class Preparer:
    """Prepared documents by text: a DocumentNode ready to execute, or the reason it cannot run."""

    def __init__(self, schema: GraphQLSchema, limits: Limits, size: int = CACHE_SIZE) -> None:
        self.schema = schema
        self.limits = limits
        self.size = size
        self.rules = tuple(specified_rules) + (
            () if limits.introspection else (NoSchemaIntrospectionCustomRule,)
        )
        self._cache: OrderedDict[str, DocumentNode | Refusal] = OrderedDict()

    def prepare(self, query: str) -> DocumentNode | Refusal:
        found = self._cache.get(query)
        if found is not None:
            self._cache.move_to_end(query)
            return found
        prepared = self._prepare(query)
        self._cache[query] = prepared
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return prepared

    def _prepare(self, query: str) -> DocumentNode | Refusal:
        try:
            document = parse(query, max_tokens=self.limits.max_tokens)
        except GraphQLError as error:
            if "more than" in error.message and "tokens" in error.message:
                return Refusal(
                    [limit_error(f"The document has more than {self.limits.max_tokens} tokens.")]
                )
            return Refusal([graphql_error(error, ErrorCode.GRAPHQL_PARSE_FAILED)])
        errors = validate(
            self.schema,
            document,
            self.rules,
            max_errors=10,
            hide_suggestions=not self.limits.suggestions,
        )
        if errors:
            return Refusal([graphql_error(e, ErrorCode.GRAPHQL_VALIDATION_FAILED) for e in errors])
        if _has_nul(document):
            return Refusal(
                [{"message": NUL_MESSAGE, "extensions": {"code": ErrorCode.BAD_USER_INPUT.value}}]
            )
        over = _over_limits(measure(self.schema, document, self.limits), self.limits)
        if over:
            return Refusal(over)
        return document


NUL_MESSAGE = "Text may not contain NUL (U+0000) characters."


def variables_problem(value: Any, limit: int) -> tuple[ErrorCode, str] | None:
    """What is wrong with the variables before they reach a resolver: a list longer than
    `limit`, or a NUL character (PostgreSQL text cannot hold one), at any depth."""
    if isinstance(value, str):
        return (ErrorCode.BAD_USER_INPUT, NUL_MESSAGE) if "\x00" in value else None
    if isinstance(value, list):
        if len(value) > limit:
            return (
                ErrorCode.OPERATION_LIMIT_EXCEEDED,
                f"A list in the variables holds more than {limit} items.",
            )
        items: Iterable[Any] = value
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    else:
        return None
    for item in items:
        problem = variables_problem(item, limit)
        if problem is not None:
            return problem
    return None


def _has_nul(document: DocumentNode) -> bool:
    found = False

    class Visitor(graphql.Visitor):
        def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
            nonlocal found
            found = found or "\x00" in node.value

    graphql.visit(document, Visitor())
    return found
