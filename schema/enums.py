"""GraphQL enums: the domain's enums, registered with strawberry under their GraphQL names."""

from __future__ import annotations

import strawberry

from gateway.domain import Category, ConsentMethod, LegalBasis, MembershipStatus, Tier

strawberry.enum(LegalBasis, description="The GDPR Art. 6 ground of a purpose.")
strawberry.enum(
    ConsentMethod,
    description="EXPLICIT: the member actively confirmed this purpose. CONDITIONAL: consent given "
    "as part of the terms of joining, shown clearly at sign-up.",
)
strawberry.enum(
    Category,
    name="DataCategory",
    description="The data category of a member field (policy file spelling: lower case, with a dot "
    "for enriched categories, e.g. `enriched.demographics`).",
)
strawberry.enum(Tier, description="Membership tier.")
strawberry.enum(MembershipStatus, description="Membership state.")

DataCategory = Category

__all__ = ["ConsentMethod", "DataCategory", "LegalBasis", "MembershipStatus", "Tier"]
