"""The field→category map, kept on the GraphQL types themselves.

A member field is declared with `gated(Category.X)` (released only through the access decision) or
`ungated()` (safe to show whoever may see the member at all, such as the id the caller passed).
`@categorized` refuses, at import, a type with a field declared neither way: a field without a
category cannot be added. `released()` builds what a gated type resolves from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any, TypeVar

import strawberry
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from gateway.domain import Category

_CATEGORY = "tillit.category"
_UNGATED = "tillit.ungated"
T = TypeVar("T", bound=type)


def gated(category: Category, description: str) -> Any:
    """A member field released only when the access decision says so.

    No resolver of its own (a resolver per field costs every read): the query resolver hands
    GraphQL an object holding only what was released, and reports what was withheld.
    """
    return strawberry.field(description=description, metadata={_CATEGORY: category})


def ungated(description: str) -> Any:
    return strawberry.field(description=description, metadata={_UNGATED: True})


def categorized(cls: T) -> T:
    """Check that every field of a strawberry type is either gated (with a category) or ungated."""
    definition = get_object_definition(cls, strict=True)
    missing = [
        f.python_name
        for f in definition.fields
        if _CATEGORY not in f.metadata and _UNGATED not in f.metadata
    ]
    if missing:
        raise TypeError(
            f"{cls.__name__} fields without a data category: {', '.join(missing)}. "
            "Declare them with gated(Category.X, ...) or ungated(...)."
        )
    return cls


def categories_of(cls: type) -> dict[str, Category]:
    """Python field name → category, for the gated fields of a type."""
    definition = get_object_definition(cls, strict=True)
    return {
        f.python_name: f.metadata[_CATEGORY]
        for f in definition.fields
        if _CATEGORY in (f.metadata or {})
    }


def graphql_names_of(cls: type) -> dict[str, str]:
    """GraphQL field name → python field name."""
    definition = get_object_definition(cls, strict=True)
    return {
        f.graphql_name or to_camel_case(f.python_name): f.python_name for f in definition.fields
    }


def released(
    gated_fields: Iterable[str], member_id: Any, purpose: str, values: Mapping[str, Any]
) -> SimpleNamespace:
    """What a gated type resolves from: the released values, and None for every other gated
    field, so that nothing the decision did not release can be read (fail closed)."""
    view = SimpleNamespace(**{**dict.fromkeys(gated_fields), **values})
    view.id = member_id
    view.purpose = purpose
    return view
