"""Fuzzing the GraphQL endpoint: thousands of generated operations, variables and bodies.

Documents come from the schema itself (hypothesis-graphql: valid operations on every root field
and mutation, and invalid ones), with ids drawn from real members and purposes from the policy,
so that the decision and the audit paths are reached, not only validation. Every answer must be
below 500, carry no stack trace or SQL, and release no member data without its access event.
The seed is fixed (derandomize) so that CI is reproducible; a failure prints the example.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import hypothesis_graphql as hg
import pytest
from graphql import print_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import nodes
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Capability, Role
from schema import schema
from tests.conftest import Api, add_client, add_member, member_token
from tests.helpers import grant

SDL = print_schema(schema._schema)
ROOTS = sorted(schema._schema.query_type.fields)  # type: ignore[union-attr]
MUTATIONS = sorted(schema._schema.mutation_type.fields)  # type: ignore[union-attr]
PURPOSES = ["personalized_offers", "membership_service", "customer_insight", "data_quality"]
LEAKS = ("Traceback", 'File "', "asyncpg", "sqlalchemy", "SELECT ", "INSERT ", "psycopg")
FUZZ = settings(
    max_examples=450,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

# Filled by the `world` fixture before any example runs: real ids, so reads can succeed.
MEMBER_IDS: list[str] = []
TOKENS: dict[str, str | None] = {}


def scalars() -> dict[str, st.SearchStrategy[Any]]:
    some_id = st.one_of(
        st.sampled_from(MEMBER_IDS or [str(uuid.uuid4())]),
        st.uuids().map(str),
        st.text(max_size=40),
    )
    return {
        "ID": some_id.map(nodes.String),
        "String": st.one_of(st.sampled_from(PURPOSES), st.text(max_size=60)).map(nodes.String),
        "Date": st.dates().map(lambda d: nodes.String(d.isoformat())),
        "DateTime": st.one_of(
            st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=30)
        ).map(nodes.String),
        "JSON": st.just(nodes.String("{}")),
    }


@pytest.fixture
async def world(db: AsyncEngine) -> None:
    MEMBER_IDS.clear()
    for index in range(4):
        member_id = await add_member(db)
        if index % 2 == 0:
            await grant(db, member_id, "personalized_offers")
        MEMBER_IDS.append(str(member_id))
    app = await add_client(
        db,
        name="fuzz-app",
        purposes=tuple(PURPOSES),
        capabilities=tuple(Capability),
    )
    auditor = await add_client(db, name="fuzz-auditor", role=Role.AUDITOR, purposes=())
    TOKENS.clear()
    TOKENS.update(
        {
            "app": app.key,
            "auditor": auditor.key,
            "member": member_token(uuid.UUID(MEMBER_IDS[0])),
            "anonymous": None,
        }
    )


def released_members(data: Any) -> int:
    """How many member profiles (or a member's own data) the answer carries."""
    if not isinstance(data, dict):
        return 0
    count = 0
    for key, value in data.items():
        if key == "member" or (key.startswith("member") and isinstance(value, dict)):
            count += value is not None
        elif key == "members" and isinstance(value, list):
            count += sum(1 for item in value if item is not None)
        elif key == "audience" and isinstance(value, dict):
            count += len(value.get("edges") or ())
        elif key == "me" and value is not None:
            count += 1
    return count


async def check(api: Api, db: AsyncEngine, response: Any) -> None:
    assert response.status_code < 500, response.text
    for leak in LEAKS:
        assert leak not in response.text, response.text
    if response.status_code != 200:
        return
    body = response.json()
    answers = body if isinstance(body, list) else [body]
    released = sum(released_members(answer.get("data")) for answer in answers)
    if released:
        async with db.connect() as connection:
            audited = await connection.scalar(
                text("SELECT count(*) FROM access_events WHERE request_id = :r"),
                {"r": response.headers["x-request-id"]},
            )
        assert audited >= released, body


def operations() -> st.SearchStrategy[str]:
    custom = scalars()
    per_root = [hg.queries(SDL, fields=[root], custom_scalars=custom) for root in ROOTS]
    per_mutation = [hg.mutations(SDL, fields=[m], custom_scalars=custom) for m in MUTATIONS]
    return st.one_of(*per_root, *per_mutation)


@FUZZ
@given(data=st.data())
async def test_generated_operations(api: Api, db: AsyncEngine, world: None, data: Any) -> None:
    document = data.draw(operations(), label="document")
    caller = data.draw(st.sampled_from(sorted(TOKENS)), label="caller")

    response = await api.graphql(document, token=TOKENS[caller])

    await check(api, db, response)


@FUZZ
@given(data=st.data())
async def test_invalid_operations(api: Api, db: AsyncEngine, world: None, data: Any) -> None:
    document = data.draw(
        st.one_of(
            hg.from_schema(SDL, custom_scalars=scalars(), mode=hg.Mode.NEGATIVE),
            st.text(max_size=300),
            hg.from_schema(SDL, custom_scalars=scalars()).map(lambda d: d[: len(d) // 2]),
        ),
        label="document",
    )

    response = await api.graphql(document, token=TOKENS["app"])

    await check(api, db, response)
    assert response.status_code in (200, 400), response.text


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=20,
)
WITH_VARIABLES = [
    "query($id: ID!, $purpose: String!) { member(id: $id, purpose: $purpose) "
    "{ id tier incomeBand address { city } consents { purpose state } } }",
    "query($ids: [ID!]!, $purpose: String!) { members(ids: $ids, purpose: $purpose) "
    "{ id email lifestyleSegment } }",
    "mutation($member: ID, $purpose: String!, $method: ConsentMethod!, $notice: String!) "
    "{ grantConsent(memberId: $member, purpose: $purpose, method: $method, "
    'noticeVersion: $notice, channel: "fuzz", evidence: "x") { receiptId } }',
    "mutation($member: ID!, $values: EnrichmentValuesInput!) { recordEnrichment(memberId: "
    '$member, purpose: "personalized_offers", source: "fuzz", values: $values) { written } }',
    "query($first: Int!, $after: String) { accessLog(first: $first, after: $after) "
    "{ edges { cursor node { operation } } } }",
]


@FUZZ
@given(data=st.data())
async def test_generated_variables(api: Api, db: AsyncEngine, world: None, data: Any) -> None:
    document = data.draw(st.sampled_from(WITH_VARIABLES), label="document")
    names = ["id", "ids", "purpose", "member", "method", "notice", "values", "first", "after"]
    known = st.sampled_from(MEMBER_IDS + PURPOSES + ["EXPLICIT", "2026-01"])
    variables = data.draw(
        st.dictionaries(
            st.sampled_from(names),
            st.one_of(known, st.lists(known, max_size=4), JSON),
            max_size=6,
        ),
        label="variables",
    )
    caller = data.draw(st.sampled_from(["app", "auditor"]), label="caller")

    response = await api.graphql(document, variables, token=TOKENS[caller])

    await check(api, db, response)


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries({"query": st.text(max_size=80), "variables": JSON}).map(
            lambda value: json.dumps(value).encode()
        ),
    )
)
async def test_arbitrary_bodies(api: Api, db: AsyncEngine, world: None, body: bytes) -> None:
    response = await api.http.post(
        "/graphql",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['app']}"},
    )

    await check(api, db, response)
    assert response.status_code in (200, 400, 413), response.text
