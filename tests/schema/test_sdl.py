"""The committed SDL is the code's schema, and every member field carries a data category."""

from __future__ import annotations

import pytest
import strawberry

from gateway.domain import Category
from schema import SDL_PATH, schema
from schema.categories import categories_of, categorized, gated, ungated
from schema.types import Member


def test_committed_sdl_matches_the_code() -> None:
    committed = SDL_PATH.read_text(encoding="utf-8")

    assert committed == schema.as_str() + "\n", (
        "schema/schema.graphql is out of date: run `make schema` and commit the result"
    )


def test_every_member_field_but_id_has_a_category() -> None:
    categories = categories_of(Member)

    assert "id" not in categories
    assert categories["email"] is Category.CONTACT
    assert categories["income_band"] is Category.ENRICHED_DEMOGRAPHICS
    assert categories["interests"] is Category.ENRICHED_LIFESTYLE
    assert categories["address"] is Category.ADDRESS
    assert categories["deceased"] is Category.STATUS


def test_a_field_without_a_category_cannot_be_added() -> None:
    with pytest.raises(TypeError, match="shoe_size"):

        @categorized
        @strawberry.type
        class Careless:
            id: strawberry.ID = ungated("id")
            email: str | None = gated(Category.CONTACT, "email")
            shoe_size: int | None = None
