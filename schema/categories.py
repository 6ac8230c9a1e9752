"""The field→category map, kept on the GraphQL types themselves.

A member field is declared with `gated(Category.X)` (released only through the access decision) or
`ungated()` (safe to show whoever may see the member at all, such as the id the caller passed).
`@categorized` refuses, at import, a type with a field declared neither way: a field without a
category cannot be added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import strawberry
from strawberry.types.base import get_object_definition
from strawberry.utils.str_converters import to_camel_case

from gateway.domain import Category, ErrorCode
from gateway.errors import FieldWithheld

_CATEGORY = "tillit.category"
_UNGATED = "tillit.ungated"
T = TypeVar("T", bound=type)


class GatedView:
    """What a gated type resolves from: released values, and reasons for what was withheld."""

    purpose: str
    values: Mapping[str, Any]
    withheld: Mapping[str, Any]


def _resolve_gated(root: strawberry.Parent[GatedView], info: strawberry.Info) -> Any:
    name = info.python_name
    if name in root.values:
        return root.values[name]
    withheld = root.withheld.get(name)
    if withheld is None:
        # Not decided means not released: fail closed rather than fall back to the stored value.
        raise FieldWithheld(ErrorCode.FORBIDDEN, "This field was not part of the access decision.")
    raise FieldWithheld(withheld.code, withheld.message, purpose=root.purpose, **withheld.hints)


def gated(category: Category, description: str) -> Any:
    """A member field released only when the access decision says so."""
    return strawberry.field(
        resolver=_resolve_gated, description=description, metadata={_CATEGORY: category}
    )


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
