"""Preparing a GraphQL document once: parse, validate, and hold it to the operation limits.

A document is parsed with a token cap, validated by the specification's rules (plus no
introspection outside dev mode, and no "did you mean" suggestions there), and then measured:
nesting depth, aliases, root fields, and an estimated cost. The outcome, good or bad, is kept in
a bounded cache keyed by the document's text, so a document an app sends a million times is
prepared once; executing it is graphql-core's `execute` on the prepared document, with no
per-request extension machinery around it.
"""

from __future__ import annotations

import re
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
    NullValueNode,
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
from gateway.web.prescan import Shape, prescan

# The multiplier for a list field whose size no argument bounds.
UNBOUNDED_LIST_ESTIMATE = 10
# What a field asked `proofsAt` adds for each entry it may return: an inclusion proof reads tiles
# and hashes its way up the tree, some fifty fields' work (measured: 0.2 ms of CPU a proof).
PROOF_COST = 50
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
    # Selections the measurer looked at for this operation (and the ones before it): the work
    # measuring took, which stays within the document's size.
    work: int = 0


@dataclass(frozen=True, slots=True)
class _Summary:
    """What one selection set adds up to, fragments expanded: the levels it nests (itself
    included), its aliases, its cost for one instance of its parent, and its fields."""

    depth: int = 0
    aliases: int = 0
    cost: int = 0
    fields: int = 0


_EMPTY = _Summary()


def _is_object_list(type_: Any, node: FieldNode) -> bool:
    """A list of objects multiplies what is below it; a list of scalars is one value."""
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    return isinstance(type_, GraphQLList) and node.selection_set is not None


class _Measurer:
    """Measures one document with the schema's types at hand, as if its fragments were expanded,
    in time linear in the document: each fragment is summed up once (per list bound above it) and
    its summary reused wherever it is spread, since a selection set's cost under a list of n is n
    times its cost under one. Expanding instead would take time exponential in the document
    (fragment F(k) spreading F(k-1) twice is 2^k fields from a few bytes)."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        limits: Limits,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.limits = limits
        self.visited = 0
        self._fragment_summaries: dict[tuple[str, int | None], _Summary] = {}

    def _type(self, name: str) -> GraphQLObjectType | None:
        named = self.schema.get_type(name)
        return named if isinstance(named, GraphQLObjectType) else None

    def summarize(
        self, selections: SelectionSetNode, parent: GraphQLObjectType | None, page: int | None
    ) -> _Summary:
        """`page` is the `first` of a connection above, which bounds the lists inside it."""
        depth = 1
        aliases = cost = fields = 0
        for selection in selections.selections:
            self.visited += 1
            if isinstance(selection, FieldNode):
                fields += 1
                if selection.alias is not None:
                    aliases += 1
                name = selection.name.value
                if name.startswith("__"):
                    continue  # __typename is free; introspection has its own depth rule
                definition = parent.fields.get(name) if parent is not None else None
                bound = self.argument_bound(selection, definition)
                is_list = definition is not None and _is_object_list(definition.type, selection)
                size = (bound or page or UNBOUNDED_LIST_ESTIMATE) if is_list else 1
                cost += size
                if _asks_proofs(selection):
                    cost += (bound or UNBOUNDED_LIST_ESTIMATE) * PROOF_COST
                if selection.selection_set is not None:
                    child_type = get_named_type(definition.type) if definition else None
                    child = self.summarize(
                        selection.selection_set,
                        child_type if isinstance(child_type, GraphQLObjectType) else None,
                        None if is_list else bound,
                    )
                    depth = max(depth, child.depth + 1)
                    aliases += child.aliases
                    cost += size * child.cost
                continue
            if isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                on = parent if condition is None else self._type(condition.name.value)
                inner = self.summarize(selection.selection_set, on, page)
            elif isinstance(selection, FragmentSpreadNode):
                inner = self.fragment(selection.name.value, page)
            else:
                continue
            depth = max(depth, inner.depth)
            aliases += inner.aliases
            cost += inner.cost
            fields += inner.fields
        return _Summary(depth, aliases, cost, fields)

    def fragment(self, name: str, page: int | None) -> _Summary:
        key = (name, page)
        found = self._fragment_summaries.get(key)
        if found is not None:
            return found
        definition = self.fragments.get(name)
        # An unknown fragment or a cycle has been refused by validation already; the empty
        # summary in place while this one is summed keeps a cycle from recursing here anyway.
        self._fragment_summaries[key] = _EMPTY
        if definition is None:
            return _EMPTY
        summary = self.summarize(
            definition.selection_set, self._type(definition.type_condition.name.value), page
        )
        self._fragment_summaries[key] = summary
        return summary

    def argument_bound(self, node: FieldNode, definition: Any = None) -> int | None:
        for argument in node.arguments or ():
            if argument.name.value in ("ids", "first"):
                return max(1, self.bounded(argument.value))
        # Not written: the argument's default bounds the list (`first: Int! = 100`).
        declared = getattr(definition, "args", {}).get("first")
        default = getattr(declared, "default_value", None)
        if isinstance(default, int) and not isinstance(default, bool):
            return max(1, min(default, self.limits.max_list_size))
        return None

    def bounded(self, value: ValueNode) -> int:
        if isinstance(value, ListValueNode):
            return len(value.values)
        if isinstance(value, IntValueNode):
            return min(int(value.value), self.limits.max_list_size)
        if isinstance(value, VariableNode):
            return self.limits.max_list_size
        return 1


def _asks_proofs(node: FieldNode) -> bool:
    """Whether the field names `proofsAt` with anything but a literal null."""
    return any(
        a.name.value == "proofsAt" and not isinstance(a.value, NullValueNode)
        for a in node.arguments or ()
    )


def measure(
    schema: GraphQLSchema,
    document: DocumentNode,
    limits: Limits,
) -> dict[str, Measure]:
    """Depth, aliases, root fields and cost of each operation in the document."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walker = _Measurer(schema, fragments, limits)
    measures = {}
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        root = schema.get_root_type(definition.operation)
        found = walker.summarize(definition.selection_set, root, None)
        name = definition.name.value if definition.name else ""
        measures[name] = Measure(
            found.depth, found.aliases, found.fields, found.cost, walker.visited
        )
    return measures


def _over_limits(
    measures: Iterable[Measure], limits: Limits, *, cost_is_floor: bool = False
) -> list[dict[str, Any]]:
    """The limits the first operation over any exceeds, each in words; `cost_is_floor` when the
    costs are the prescan's floors (so the message says "at least")."""
    at_least = "at least " if cost_is_floor else ""
    for m in measures:
        errors = []
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
                    f"The operation's estimated cost is {at_least}{m.cost}; "
                    f"the limit is {limits.max_cost}."
                )
            )
        if errors:
            return errors
    return []


def _over_shape(shape: Shape, limits: Limits) -> list[dict[str, Any]]:
    """What the prescan alone shows over a limit, in the measurer's words (it knows no depth)."""
    measures = (
        Measure(0, aliases, root_fields, priced)
        for root_fields, aliases, priced in shape.operations
    )
    return _over_limits(measures, limits, cost_is_floor=True)


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
        shape = prescan(query, self.limits.max_tokens)
        if shape is not None and shape.tokens > self.limits.max_tokens:
            return Refusal(
                [limit_error(f"The document has more than {self.limits.max_tokens} tokens.")]
            )
        if shape is not None:
            over = _over_shape(shape, self.limits)
            if over:
                return Refusal(over)
        try:
            document = parse(query, max_tokens=self.limits.max_tokens)
        except GraphQLError as error:
            if "more than" in error.message and "tokens" in error.message:
                return Refusal(
                    [limit_error(f"The document has more than {self.limits.max_tokens} tokens.")]
                )
            return Refusal([graphql_error(error, ErrorCode.GRAPHQL_PARSE_FAILED)])
        # Measured before validation: measuring is linear in the document and needs no valid
        # one, while the validation rules walk every selection, so a document far over a limit
        # is refused at the least cost.
        over = _over_limits(measure(self.schema, document, self.limits).values(), self.limits)
        if over:
            return Refusal(over)
        errors = validate(
            self.schema,
            document,
            self.rules,
            max_errors=10,
            hide_suggestions=not self.limits.suggestions,
        )
        if errors:
            return Refusal([graphql_error(e, ErrorCode.GRAPHQL_VALIDATION_FAILED) for e in errors])
        problem = _text_in_literals(document)
        if problem is not None:
            return Refusal(
                [{"message": problem, "extensions": {"code": ErrorCode.BAD_USER_INPUT.value}}]
            )
        return document


NUL_MESSAGE = "Text may not contain NUL (U+0000) characters."
# Characters that make stored text show something other than it says: C0 and C1 controls (tab,
# line feed and carriage return excepted: wording shown to a member may run over lines), the
# bidirectional embeddings, overrides, isolates and marks ("Trojan Source"), and the Unicode line
# and paragraph separators. Refused in every string a caller sends, since every string may end up
# on a member's page, an auditor's export or a log.
_UNSAFE_TEXT = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]"
)


def text_problem(value: str) -> str | None:
    """Why a caller's string may not be kept, or None."""
    # Every refused character is a control, a format character or a line or paragraph separator,
    # none of which is printable: a printable string (nearly all) is settled by one C loop
    # instead of the regular expression, which costs some 9 ns a character.
    if value.isprintable():
        return None
    found = _UNSAFE_TEXT.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return NUL_MESSAGE
    return (
        "Text may not contain control or bidirectional-formatting characters "
        f"(found U+{ord(found.group()):04X})."
    )


def variables_problem(value: Any, limit: int, max_depth: int) -> tuple[ErrorCode, str] | None:
    """What is wrong with the variables before they reach a resolver: a list longer than
    `limit`, nesting deeper than `max_depth`, or text no string may hold (see `text_problem`), at
    any depth. Walked with a stack of its own, so no JSON the body parser accepts can exhaust
    Python's."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return ErrorCode.BAD_USER_INPUT, problem
            continue
        if isinstance(item, list):
            if len(item) > limit:
                return (
                    ErrorCode.OPERATION_LIMIT_EXCEEDED,
                    f"A list in the variables holds more than {limit} items.",
                )
            children: Iterable[Any] = item
        elif isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        else:
            continue
        if depth >= max_depth:
            return (
                ErrorCode.OPERATION_LIMIT_EXCEEDED,
                f"The variables nest deeper than {max_depth} levels.",
            )
        # The strings of one list or object are searched as one text (the pattern matches single
        # characters, so joining them finds what searching each would): a hundred ids cost one
        # search, not a hundred.
        texts = []
        for child in children:
            if type(child) is str:
                texts.append(child)
            else:
                stack.append((child, depth + 1))
        problem = text_problem("".join(texts)) if texts else None
        if problem is not None:
            return ErrorCode.BAD_USER_INPUT, problem
    return None


def _text_in_literals(document: DocumentNode) -> str | None:
    found: str | None = None

    class Visitor(graphql.Visitor):
        def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
            nonlocal found
            found = found or text_problem(node.value)

    graphql.visit(document, Visitor())
    return found
