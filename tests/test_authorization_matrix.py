"""The authorisation matrix: every root field and mutation by every kind of caller, from one table.

A cell is the outcome the caller sees: OK (the field answered), or the code of the error on the
root field, or UNAUTHENTICATED (HTTP 401). Each cell also checks that nothing answered 5xx and
that no refused write changed anything but the audit trail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import mint_member_token
from gateway.domain import Capability, Role
from tests.conftest import TEST_SECRET, Api, add_client, add_member, member_token, row_counts
from tests.helpers import WORDING, grant

CALLERS = [
    "anonymous",
    "app",  # declares the purpose it is registered for, with every capability
    "app-without-purpose",  # registered for membership_service only, no capabilities
    "member-self",
    "member-other",
    "auditor",
    "admin",
    "expired-token",
]

# (root field, document, variables beyond $target)
OPERATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "purposes": ("{ purposes { key } }", {}),
    "member": (
        'query($target: ID!) { member(id: $target, purpose: "personalized_offers") '
        "{ id incomeBand } }",
        {},
    ),
    "members": (
        'query($target: ID!) { members(ids: [$target], purpose: "personalized_offers") '
        "{ id incomeBand } }",
        {},
    ),
    "audience": (
        '{ audience(purpose: "personalized_offers", first: 5) '
        "{ edges { node { id incomeBand } } } }",
        {},
    ),
    "me": ("{ me { id } }", {}),
    "accessLog": ("{ accessLog(first: 5) { edges { cursor } } }", {}),
    "transparencyReport": (
        '{ transparencyReport(from: "2026-01-01T00:00:00Z", to: "2027-01-01T00:00:00Z") '
        "{ accesses } }",
        {},
    ),
    "grantConsent": (
        "mutation($target: ID, $evidence: String) { grantConsent(memberId: $target, purpose: "
        '"customer_insight", method: EXPLICIT, noticeVersion: "2026-01", channel: "app", '
        "evidence: $evidence) { receiptId } }",
        {"evidence": WORDING},
    ),
    "withdrawConsent": (
        'mutation($target: ID) { withdrawConsent(memberId: $target, purpose: "personalized_offers")'
        " { withdrawn } }",
        {},
    ),
    "recordEnrichment": (
        "mutation($target: ID!) { recordEnrichment(memberId: $target, purpose: "
        '"personalized_offers", source: "Broker AS", values: {lifestyleSegment: "urban"}) '
        "{ written } }",
        {},
    ),
    "recordCleansing": (
        'mutation($target: ID!) { recordCleansing(memberId: $target, field: "city", '
        'newValue: "Bergen", source: "Folkeregisteret") { changed } }',
        {},
    ),
    "objectToProcessing": (
        'mutation { objectToProcessing(purpose: "data_quality") { purpose } }',
        {},
    ),
    "exportMyData": ("mutation { exportMyData }", {}),
    "withdrawObjection": (
        'mutation { withdrawObjection(purpose: "data_quality") { lifted } }',
        {},
    ),
    "enrollMember": (
        'mutation { enrollMember(member: {firstName: "Ola", lastName: "Nordmann", '
        'email: "ola.new@example.org"}, termsVersion: "2026-01", channel: "web") { memberId } }',
        {},
    ),
    "updateMyProfile": (
        'mutation { updateMyProfile(changes: {city: "Bergen"}) { changed } }',
        {},
    ),
    "updateMember": (
        'mutation($target: ID!) { updateMember(memberId: $target, purpose: "membership_service", '
        'changes: {city: "Bergen"}) { changed } }',
        {},
    ),
    "leaveClub": ("mutation { leaveClub { closed } }", {}),
    "closeMembership": (
        "mutation($target: ID!) { closeMembership(memberId: $target) { closed } }",
        {},
    ),
    "eraseMe": (
        'mutation { eraseMe(confirmEmail: "target@example.org") { receiptId } }',
        {},
    ),
}

OK, UNAUTH, FORBIDDEN = "OK", "UNAUTHENTICATED", "FORBIDDEN"
NOT_PERMITTED = "PURPOSE_NOT_PERMITTED"
CONFIRM = "CONFIRMATION_REQUIRED"

# The table: one row per operation, one column per caller kind (in CALLERS' order).
EXPECTED: dict[str, list[str]] = {
    # columns: anonymous, app, app without the purpose, member on self, member on another,
    # auditor, admin, expired token
    "purposes": [OK, OK, OK, OK, OK, OK, OK, UNAUTH],
    "member": [UNAUTH, OK, NOT_PERMITTED, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "members": [UNAUTH, OK, NOT_PERMITTED, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    # The app without the purpose is refused for the purpose before the capability.
    "audience": [UNAUTH, OK, NOT_PERMITTED, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "me": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "accessLog": [UNAUTH, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, UNAUTH],
    "transparencyReport": [
        UNAUTH,
        FORBIDDEN,
        FORBIDDEN,
        FORBIDDEN,
        FORBIDDEN,
        OK,
        FORBIDDEN,
        UNAUTH,
    ],
    "grantConsent": [UNAUTH, OK, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "withdrawConsent": [UNAUTH, OK, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "recordEnrichment": [UNAUTH, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "recordCleansing": [UNAUTH, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "objectToProcessing": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "exportMyData": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "withdrawObjection": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "enrollMember": [UNAUTH, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "updateMyProfile": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "updateMember": [UNAUTH, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    "leaveClub": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, OK, FORBIDDEN, FORBIDDEN, UNAUTH],
    "closeMembership": [UNAUTH, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, UNAUTH],
    # The other member's confirmation is not their own email: refused, nothing erased.
    "eraseMe": [UNAUTH, FORBIDDEN, FORBIDDEN, OK, CONFIRM, FORBIDDEN, FORBIDDEN, UNAUTH],
}
WRITES = {
    "grantConsent",
    "withdrawConsent",
    "recordEnrichment",
    "recordCleansing",
    "objectToProcessing",
    "withdrawObjection",
    "enrollMember",
    "updateMyProfile",
    "updateMember",
    "leaveClub",
    "closeMembership",
    "eraseMe",
}
CELLS = [
    pytest.param(op, caller, EXPECTED[op][i], id=f"{op}-{caller}")
    for op in OPERATIONS
    for i, caller in enumerate(CALLERS)
]


def test_the_table_covers_every_root_field_and_mutation() -> None:
    from schema import schema

    roots = set(schema._schema.query_type.fields) | set(schema._schema.mutation_type.fields)  # type: ignore[union-attr]

    assert set(OPERATIONS) == roots == set(EXPECTED)
    assert all(len(row) == len(CALLERS) for row in EXPECTED.values())


@dataclasses.dataclass
class World:
    target: uuid.UUID
    tokens: dict[str, str | None]


async def world(db: AsyncEngine) -> World:
    target = await add_member(db, email="target@example.org")
    other = await add_member(db, email="other@example.org")
    await grant(db, target, "personalized_offers")
    everything = tuple(Capability)
    app = await add_client(
        db,
        name="app",
        purposes=("membership_service", "personalized_offers", "customer_insight", "data_quality"),
        capabilities=everything,
    )
    plain = await add_client(db, name="plain", purposes=("membership_service",))
    auditor = await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())
    admin = await add_client(db, name="ops", role=Role.ADMIN, purposes=())
    expired = mint_member_token(target, TEST_SECRET, dt.timedelta(minutes=-5))
    return World(
        target,
        {
            "anonymous": None,
            "app": app.key,
            "app-without-purpose": plain.key,
            "member-self": member_token(target),
            "member-other": member_token(other),
            "auditor": auditor.key,
            "admin": admin.key,
            "expired-token": expired,
        },
    )


def outcome(response: Any, root: str) -> str:
    if response.status_code == 401:
        return UNAUTH
    body = response.json()
    for error in body.get("errors", ()):
        if error.get("path") == [root] or "path" not in error:
            return str(error["extensions"]["code"])
    data = body.get("data") or {}
    return OK if data.get(root) is not None else f"null without an error ({body})"


@pytest.mark.parametrize(("operation", "caller", "expected"), CELLS)
async def test_authorisation_matrix(
    api: Api, db: AsyncEngine, operation: str, caller: str, expected: str
) -> None:
    setup = await world(db)
    document, extra = OPERATIONS[operation]
    variables = {**extra}
    if "$target" in document:
        variables["target"] = str(setup.target)
    before = await row_counts(db)

    response = await api.graphql(document, variables or None, token=setup.tokens[caller])

    assert response.status_code < 500, response.text
    assert outcome(response, operation) == expected
    if operation in WRITES and expected != OK:
        after = await row_counts(db)
        after.pop("access_events"), before.pop("access_events")
        assert after == before  # a refused write changes nothing but the audit trail
