"""The direct executor for `member`/`members` answers exactly what graphql-core answers.

Generated operations of the shape it takes (leaf fields, aliases, repeats, literals or variables,
real, unknown and malformed ids, every kind of purpose, variables of the wrong type) run through
two apps on one database, one with the fast path and one without; the bodies must be equal, and
so must the access events each wrote.
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
from graphql import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Capability
from gateway.web.fastpath import FastPath
from schema import schema
from schema.categories import graphql_names_of
from schema.types import Member
from tests.conftest import add_client, add_member, make_settings, serving
from tests.helpers import enrich, grant, withdraw

LEAVES = [
    "id",
    "firstName",
    "lastName",
    "email",
    "phone",
    "tier",
    "points",
    "memberSince",
    "membershipStatus",
    "deceased",
    "incomeBand",
    "householdSize",
    "lifestyleSegment",
    "interests",
    "__typename",
]
PURPOSES = ["personalized_offers", "membership_service", "customer_insight", "data_quality", "x"]
IDS: list[str] = []
KEY: list[str] = []

S1 = (
    'query($id: ID!) { member(id: $id, purpose: "personalized_offers") '
    "{ id tier points memberSince incomeBand householdSize lifestyleSegment } }"
)


def test_a_plan_is_made_only_for_the_shape_it_handles() -> None:
    fast = FastPath(schema._schema, graphql_names_of(Member))

    def plan(text: str) -> object:
        document = parse(text)
        operation = document.definitions[0]
        return fast.plan(document, operation, None)  # type: ignore[arg-type]

    assert plan(S1) is not None
    assert plan('{ members(ids: ["a"], purpose: "p") { a: id b: tier } }') is not None
    assert plan('{ member(id: "a", purpose: "p") { address { city } } }') is None
    assert plan('{ member(id: "a", purpose: "p") { ... on Member { id } } }') is None
    assert plan('{ member(id: "a", purpose: "p") { id @include(if: true) } }') is None
    assert plan('{ a: member(id: "a", purpose: "p") { id } b: purposes { key } }') is None
    assert plan("mutation { exportMyData }") is None


@st.composite
def operations(draw: Any) -> tuple[str, dict[str, Any]]:
    many = draw(st.booleans())
    fields = draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=8))
    selection = " ".join(
        f"{name}" if not draw(st.booleans()) else f"k{i}: {name}" for i, name in enumerate(fields)
    )
    some_id = st.one_of(st.sampled_from(IDS), st.just(str(uuid.uuid4())), st.just("not-a-uuid"))
    purpose = draw(st.sampled_from(PURPOSES))
    variables: dict[str, Any] = {}
    if many:
        ids = draw(st.lists(some_id, min_size=0, max_size=4))
        if draw(st.booleans()):
            head, args = "query($ids: [ID!]!)", f'ids: $ids, purpose: "{purpose}"'
            variables["ids"] = draw(
                st.one_of(st.just(ids), st.just(42), st.just([None]), st.just([*ids, 3]))
            )
        else:
            head, args = "query", f'ids: {orjson.dumps(ids).decode()}, purpose: "{purpose}"'
        root = "members"
    else:
        member = draw(some_id)
        if draw(st.booleans()):
            head = "query($id: ID!, $purpose: String!)"
            args = "id: $id, purpose: $purpose"
            variables["id"] = draw(st.one_of(st.just(member), st.just(None), st.just(7)))
            variables["purpose"] = draw(st.one_of(st.just(purpose), st.just(5)))
        else:
            head, args = "query", f'id: "{member}", purpose: "{purpose}"'
        root = "member"
    if draw(st.booleans()):
        variables["undeclared"] = "ignored"
    alias = "m: " if draw(st.booleans()) else ""
    return f"{head} {{ {alias}{root}({args}) {{ {selection} }} }}", variables


async def events(db: AsyncEngine, request_id: str) -> list[dict[str, Any]]:
    async with db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT operation, actor_kind, client_id, member_id, purpose, legal_basis, "
                "outcome, fields_requested, fields_released, fields_withheld, consent_ids, "
                "details FROM access_events WHERE request_id = :r ORDER BY id"
            ),
            {"r": request_id},
        )
        return [dict(row._mapping) for row in rows]


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_fast_path_answers_what_graphql_core_answers(
    db: AsyncEngine, gateway_url: str, world: None, data: Any
) -> None:
    document, variables = data.draw(operations(), label="operation")
    number = uuid.uuid4().hex
    async with AsyncExitStack() as stack:
        fast = await stack.enter_async_context(serving(make_settings(gateway_url), gateway_url))
        slow = await stack.enter_async_context(
            serving(make_settings(gateway_url, fast_path=False), gateway_url)
        )
        answers = [
            await api.graphql(
                document,
                variables or None,
                token=KEY[0],
                headers={"X-Request-ID": f"{tag}-{number}"},
            )
            for api, tag in ((fast, "fast"), (slow, "slow"))
        ]

    assert answers[0].status_code == answers[1].status_code
    assert answers[0].json() == answers[1].json()
    assert await events(db, f"fast-{number}") == await events(db, f"slow-{number}")


@pytest.fixture
async def world(db: AsyncEngine) -> None:
    IDS.clear()
    KEY.clear()
    for index in range(5):
        member_id = await add_member(db)
        if index < 2:
            grant_id = await grant(db, member_id, "personalized_offers")
            if index == 0:
                await enrich(db, member_id, grant_id)
        elif index == 3:  # a withdrawn consent, with values obtained under it before
            await enrich(db, member_id, await grant(db, member_id, "personalized_offers"))
            await withdraw(db, member_id, "personalized_offers")
        elif index == 4:  # conditional consent for one purpose, explicit for another
            await grant(db, member_id, "customer_insight", method="CONDITIONAL")
            await grant(db, member_id, "personalized_offers", notice="2025-01")
        IDS.append(str(member_id))
    client = await add_client(
        db,
        purposes=("personalized_offers", "membership_service", "customer_insight"),
        capabilities=(Capability.CAPTURE_CONSENT,),
    )
    KEY.append(client.key)


async def test_the_common_read_does_not_use_the_general_executor(
    db: AsyncEngine, gateway_url: str, world: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.web.graphql import GraphQLEndpoint

    async def general(*_: Any, **__: Any) -> Any:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(GraphQLEndpoint, "_run_document", general)
    async with serving(make_settings(gateway_url), gateway_url) as api:
        response = await api.graphql(S1, {"id": IDS[0]}, token=KEY[0])

    assert response.status_code == 200
    assert response.json()["data"]["member"]["incomeBand"] == "500-750k"
