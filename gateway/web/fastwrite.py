"""A direct execution of the consent changes: one `grantConsent` or `withdrawConsent` field with
leaf fields only (`mutation($m: ID!) { grantConsent(memberId: $m, ...) { receiptId } }`).

The same idea as gateway.web.fastpath for profile reads: graphql-core's executor builds an
execution context, wraps the resolver and completes the result object for every request; for a
prepared document of this one shape the plan is made once, and a request coerces its variables
and arguments with graphql-core's own functions, converts them to Python values with Strawberry's
own function, calls the field's own code (schema.mutation.grant_consent / withdraw_consent: the
same checks, lock, writes and audit record) and serialises each selected value with its field's
GraphQL type. The result and its errors are what graphql-core would produce;
`tests/gateway/web/test_fastwrite.py` runs generated operations through both and compares them.
Anything else (fragments, directives, nested objects such as a receipt's localized title, several
root fields, arguments that do not coerce) returns None and takes the general path, before any
work is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLField,
    OperationDefinitionNode,
    OperationType,
    located_error,
)
from strawberry import Schema
from strawberry.types.arguments import StrawberryArgument, convert_arguments
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from gateway.web.fastpath import Leaf, field_arguments, leaf, root_leaves, text_variables
from resolvers.context import Context
from schema.by_nodes import ByNodes
from schema.mutation import CONSENT_CHANGES, Mutation

_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class WritePlan:
    operation: OperationDefinitionNode
    node: FieldNode
    field: GraphQLField
    arguments: list[StrawberryArgument]
    resolve: Callable[..., Awaitable[Any]]
    type_name: str
    key: str
    leaves: tuple[Leaf, ...]
    text_variables: tuple[tuple[str, bool], ...] | None


class WritePath:
    """Plans by prepared document; `run` executes one, or returns None for the general path."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema._schema
        self.scalars = schema.schema_converter.scalar_registry
        self.config = schema.config
        definition = get_object_definition(Mutation, strict=True)
        self.fields = {
            field.graphql_name or to_camel_case(field.python_name): field
            for field in definition.fields
        }
        # Each result type's plain attributes (a field with a resolver of its own, such as a
        # receipt's localized title, leaves the document to the general path).
        self.python_names: dict[str, dict[str, str]] = {}
        for _, result_type in CONSENT_CHANGES.values():
            result = get_object_definition(result_type, strict=True)
            self.python_names[result.name] = {
                field.graphql_name or to_camel_case(field.python_name): field.python_name
                for field in result.fields
                if field.base_resolver is None
            }
        self._plans: ByNodes[WritePlan | None] = ByNodes(_CACHE_SIZE)

    def plan(
        self, document: DocumentNode, operation: OperationDefinitionNode | None, name: str | None
    ) -> WritePlan | None:
        return self._plans.get(
            (document,), name, lambda: self._make(operation) if operation is not None else None
        )

    def _make(self, operation: OperationDefinitionNode) -> WritePlan | None:
        selections = operation.selection_set.selections
        root = selections[0] if len(selections) == 1 else None
        change = CONSENT_CHANGES.get(root.name.value) if isinstance(root, FieldNode) else None
        if change is None:
            return None
        resolve, result_type = change
        type_name = get_object_definition(result_type, strict=True).name
        names = self.python_names[type_name]
        found = root_leaves(
            operation,
            OperationType.MUTATION,
            lambda selection: leaf(self.schema, selection, names, type_name),
            CONSENT_CHANGES,
        )
        if found is None:
            return None
        node, leaves = found
        mutation_type = self.schema.mutation_type
        assert mutation_type is not None
        return WritePlan(
            operation=operation,
            node=node,
            field=mutation_type.fields[node.name.value],
            arguments=self.fields[node.name.value].arguments,
            resolve=resolve,
            type_name=type_name,
            key=node.alias.value if node.alias else node.name.value,
            leaves=leaves,
            text_variables=text_variables(operation.variable_definitions),
        )

    async def run(
        self,
        plan: WritePlan,
        context: Context,
        variables: dict[str, Any] | None,
        *,
        hide_suggestions: bool,
    ) -> ExecutionResult | None:
        arguments = field_arguments(self.schema, plan, variables, hide_suggestions=hide_suggestions)
        if arguments is None:
            return None  # the general path reports what does not coerce
        python = convert_arguments(arguments, plan.arguments, self.scalars, self.config)
        try:
            view = await plan.resolve(context, **python)
        except Exception as failed:
            return ExecutionResult(
                {plan.key: None}, [located_error(failed, [plan.node], [plan.key])]
            )
        return self._complete(plan, view)

    @staticmethod
    def _complete(plan: WritePlan, view: Any) -> ExecutionResult:
        """The selected values as graphql-core completes them: a null or an unserialisable value
        of a non-null field nulls the (nullable) mutation field, of a nullable one only itself."""
        result: dict[str, Any] = {}
        errors: list[GraphQLError] = []
        for one in plan.leaves:
            if one.key in result:
                continue  # the same field asked twice under one key (validation allows it)
            if one.attribute is None:
                result[one.key] = plan.type_name
                continue
            path: list[str | int] = [plan.key, one.key]
            raw = getattr(view, one.attribute)
            try:
                if raw is None:
                    if one.non_null:
                        raise GraphQLError(
                            "Cannot return null for non-nullable field "
                            f"{plan.type_name}.{one.node.name.value}."
                        )
                    value = None
                elif one.many:
                    value = [one.serialize(item) for item in raw]
                else:
                    value = one.serialize(raw)
            except Exception as failed:
                errors.append(located_error(failed, [one.node], path))
                if one.non_null:
                    return ExecutionResult({plan.key: None}, errors)
                value = None
            result[one.key] = value
        return ExecutionResult({plan.key: result}, errors or None)


__all__ = ["WritePath", "WritePlan"]
