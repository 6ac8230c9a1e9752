"""Which Python value each GraphQL object type renders, declared on the type and checked.

Resolvers return the resolvers' and records' own dataclasses (views), never strawberry objects:
nothing is copied per value on the way out. A root field says so in its annotation (the view,
which mypy checks against what the resolver returns) and names its GraphQL type with
`graphql_type=`; a field resolver types its parent (`strawberry.Parent[View]`). `@renders(View)`
on the GraphQL type closes the loop: every field the type does not resolve itself is read from
the view by name, so each must be an attribute of the view, checked when the schema is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from strawberry.types.base import get_object_definition

T = TypeVar("T", bound=type)


class ViewMismatch(TypeError):
    """A GraphQL type reads a field its view does not have."""


def view_attributes(view: type) -> set[str]:
    """What a value of `view` answers to: its dataclass fields, properties and attributes."""
    names = {f.name for f in dataclasses.fields(view)} if dataclasses.is_dataclass(view) else set()
    for klass in view.__mro__:
        names.update(vars(klass))
        names.update(getattr(klass, "__annotations__", {}))
    return names


def unresolved_fields(graphql_type: type) -> list[str]:
    """The fields of a strawberry type that the default resolver reads off the value."""
    definition = get_object_definition(graphql_type, strict=True)
    return [f.python_name for f in definition.fields if f.base_resolver is None]


def check_renders(graphql_type: type, *views: type) -> None:
    for view in views:
        missing = sorted(set(unresolved_fields(graphql_type)) - view_attributes(view))
        if missing:
            raise ViewMismatch(
                f"{graphql_type.__name__} renders {view.__name__}, which has no "
                + ", ".join(missing)
            )


def renders(*views: type) -> Callable[[T], T]:
    """Declare the views a GraphQL type is rendered from (written above `@strawberry.type`)."""

    def declare(graphql_type: T) -> T:
        check_renders(graphql_type, *views)
        graphql_type.__tillit_views__ = views  # type: ignore[attr-defined]  # read by tests
        return graphql_type

    return declare


def views_of(graphql_type: type) -> tuple[Any, ...]:
    return tuple(getattr(graphql_type, "__tillit_views__", ()))
