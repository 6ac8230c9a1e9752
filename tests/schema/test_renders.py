"""Each GraphQL object type says which view it renders, and the schema refuses one that reads a
field its view does not have."""

from __future__ import annotations

import dataclasses

import pytest
import strawberry

from resolvers.consents import ReceiptView
from schema import schema
from schema.mutation import ConsentReceipt
from schema.renders import ViewMismatch, renders, views_of


def test_a_type_reading_a_field_its_view_lacks_is_refused_when_built() -> None:
    @dataclasses.dataclass
    class View:
        name: str

    with pytest.raises(ViewMismatch, match="Broken renders View, which has no email"):

        @renders(View)
        @strawberry.type
        class Broken:
            name: str
            email: str


def test_a_field_with_its_own_resolver_needs_nothing_of_the_view() -> None:
    @dataclasses.dataclass
    class View:
        name: str

    @renders(View)
    @strawberry.type
    class Fine:
        name: str

        @strawberry.field
        def shout(self) -> str:
            return "!"

    assert views_of(Fine) == (View,)


def test_the_object_types_read_from_views_declare_them() -> None:
    """Every type of the schema whose values are views (not built field by field by its parent)
    names its view."""
    declared = {
        name
        for name, graphql_type in schema.schema_converter.type_map.items()
        if views_of(getattr(graphql_type.definition, "origin", object))
    }

    assert views_of(ConsentReceipt) == (ReceiptView,)
    assert {
        "Address",
        "AddressCorrection",
        "ConsentReceipt",
        "ConsentStatus",
        "AccessEvent",
        "CleansingResult",
        "EnrichmentResult",
        "MyAccess",
        "MyConsentEvent",
        "MyEnrichedValue",
        "MyNotice",
        "MyObjection",
        "MyProfile",
        "ObjectionResult",
        "Purpose",
        "WithdrawalResult",
    } <= declared
