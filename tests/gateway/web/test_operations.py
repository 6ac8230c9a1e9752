"""Operation limits: each refuses a hostile document before it runs, with a clear 400 and no trace;
introspection and suggestions are off outside dev mode; batches are off, or capped when on."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from graphql import parse
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.hostile import doubling
from gateway.settings import Settings
from gateway.web.operations import Limits, Preparer, Refusal, measure
from schema import schema
from tests.conftest import (
    ACCEPT,
    Api,
    add_client,
    add_member,
    make_settings,
    member_token,
    row_counts,
    serving,
)

FIELDS = "id tier points"


def aliases(count: int) -> str:
    body = " ".join(f"a{i}: __typename" for i in range(count))
    return "{ " + body + " }"


def root_fields(count: int) -> str:
    body = " ".join(f"p{i}: purposes {{ key }}" for i in range(count))
    return "{ " + body + " }"


def many_tokens(count: int) -> str:
    return "{ " + " ".join(["__typename"] * count) + " }"


# (id, document, variables, the code expected, part of the message)
CASES: list[tuple[str, str, dict[str, Any] | None, str, str]] = [
    ("aliases", aliases(21), None, "OPERATION_LIMIT_EXCEEDED", "aliases"),
    ("root-fields", root_fields(6), None, "OPERATION_LIMIT_EXCEEDED", "top-level fields"),
    ("tokens", many_tokens(2_100), None, "OPERATION_LIMIT_EXCEEDED", "tokens"),
    (
        "cost",
        'query($ids: [ID!]!) { a: members(ids: $ids, purpose: "x") { consents { purpose '
        "state method noticeVersion changedAt expiresAt requiredMethod currentNoticeVersion "
        'problem receiptId } } b: members(ids: $ids, purpose: "x") { consents { purpose '
        "state method noticeVersion changedAt expiresAt requiredMethod currentNoticeVersion "
        'problem receiptId } } c: members(ids: $ids, purpose: "x") { consents { purpose '
        "state method noticeVersion } } }",
        {"ids": [str(uuid.uuid4())]},
        "OPERATION_LIMIT_EXCEEDED",
        "estimated cost",
    ),
    (
        "list-in-variables",
        'query($ids: [ID!]!) { members(ids: $ids, purpose: "membership_service") { id } }',
        {"ids": [str(uuid.uuid4()) for _ in range(101)]},
        "OPERATION_LIMIT_EXCEEDED",
        "more than 100 items",
    ),
    (
        "introspection",
        "{ __schema { types { name } } }",
        None,
        "GRAPHQL_VALIDATION_FAILED",
        "introspection",
    ),
    (
        "introspection-type",
        '{ __type(name: "Member") { name } }',
        None,
        "GRAPHQL_VALIDATION_FAILED",
        "introspection",
    ),
]


@pytest.mark.parametrize(
    ("document", "variables", "code", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_document_over_a_limit_is_refused_before_it_runs(
    api: Api, db: AsyncEngine, document: str, variables: Any, code: str, message: str
) -> None:
    client = await add_client(db, purposes=("membership_service",))
    before = await row_counts(db)

    response = await api.graphql(document, variables, token=client.key)

    assert response.status_code == 400
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == code
    assert message in body["errors"][0]["message"]
    assert "data" not in body or body["data"] is None
    assert await row_counts(db) == before  # not even an access event: nothing ran


def test_depth_and_cost_are_measured_through_fragments() -> None:
    document = """
        query { me { ...A } }
        fragment A on Me { accessLog(first: 2) { edges { ...B } } }
        fragment B on MyAccessEdge { node { occurredAt } }
    """

    [found] = measure(schema._schema, parse(document), Limits()).values()

    assert found.depth == 5
    assert found.root_fields == 1
    # me 1, accessLog 1, its edges 2 (first: 2), each edge's node 2 and occurredAt 2
    assert found.cost == 1 + 1 + 2 + 2 + 2


def test_a_connection_without_first_is_costed_at_its_default_page() -> None:
    written = 'query { audience(purpose: "p", first: 100) { edges { node { id tier } } } }'
    left_out = 'query { audience(purpose: "p") { edges { node { id tier } } } }'

    [with_first] = measure(schema._schema, parse(written), Limits()).values()
    [by_default] = measure(schema._schema, parse(left_out), Limits()).values()

    assert by_default.cost == with_first.cost
    # audience 1, its edges 100, each edge's node 100 and its two fields 2 x 100
    assert by_default.cost == 1 + 100 + 100 + 200


def test_a_too_deep_document_is_refused() -> None:
    preparer = Preparer(schema._schema, Limits(max_depth=4))

    refused = preparer.prepare("{ me { accessLog { edges { node { occurredAt } } } } }")

    assert isinstance(refused, Refusal)
    assert refused.errors[0]["message"] == "The operation nests 5 deep; the limit is 4."
    assert refused.errors[0]["extensions"]["code"] == "OPERATION_LIMIT_EXCEEDED"


def test_a_prepared_document_is_reused() -> None:
    preparer = Preparer(schema._schema, Limits())

    first = preparer.prepare("{ purposes { key } }")
    second = preparer.prepare("{ purposes { key } }")

    assert first is second
    assert not isinstance(first, Refusal)


async def test_the_body_size_is_capped(api: Api, db: AsyncEngine) -> None:
    padding = " " * 300_000
    response = await api.http.post(
        "/graphql",
        content=b'{"query": "{ purposes { key } }' + padding.encode() + b'"}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_suggestions_are_hidden_outside_dev_mode(api: Api, db: AsyncEngine) -> None:
    response = await api.graphql("{ purposes { kee } }")

    assert response.status_code == 400
    message = response.json()["errors"][0]["message"]
    assert "Cannot query field 'kee'" in message
    assert "Did you mean" not in message


async def test_dev_mode_keeps_introspection_and_suggestions(
    db: AsyncEngine, gateway_url: str
) -> None:
    async with serving(make_settings(gateway_url, dev=True), gateway_url) as dev:
        introspected = await dev.graphql("{ __schema { queryType { name } } }")
        suggested = await dev.graphql("{ purposes { kee } }")

    assert introspected.json()["data"] == {"__schema": {"queryType": {"name": "Query"}}}
    assert "Did you mean" in suggested.json()["errors"][0]["message"]


async def test_graphiql_is_off_outside_dev_mode(api: Api) -> None:
    response = await api.http.get("/graphql")

    assert response.status_code == 405


async def test_batches_run_each_operation_when_batching_is_on(
    db: AsyncEngine, gateway_url: str, settings: Settings
) -> None:
    batched = make_settings(gateway_url, max_batch=2)
    async with serving(batched, gateway_url) as api:
        two = await api.http.post(
            "/graphql",
            json=[{"query": "{ purposes { key } }"}, {"query": "{ __typename }"}],
        )
        three = await api.http.post("/graphql", json=[{"query": "{ __typename }"}] * 3)

    assert two.status_code == 200
    first, second = two.json()
    assert {p["key"] for p in first["data"]["purposes"]} >= {"membership_service"}
    assert second == {"data": {"__typename": "Query"}}
    assert three.status_code == 400
    assert three.json()["errors"][0]["extensions"]["code"] == "OPERATION_LIMIT_EXCEEDED"


async def test_the_limits_are_settings(db: AsyncEngine, gateway_url: str) -> None:
    strict = make_settings(gateway_url, max_root_fields=1, max_aliases=0, max_query_depth=2)
    async with serving(strict, gateway_url) as api:
        two_roots = await api.graphql("{ purposes { key } __typename }")
        alias = await api.graphql("{ p: purposes { key } }")
        deep = await api.graphql("{ purposes { title { nb } } }")
        fine = await api.graphql("{ purposes { key } }")

    for refused, word in ((two_roots, "top-level"), (alias, "aliases"), (deep, "nests")):
        assert refused.status_code == 400
        assert word in refused.json()["errors"][0]["message"]
    assert fine.status_code == 200


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        ('{ member(id: "x", purpose: "a\\u0000b") { id } }', None),
        (
            'query($p: String!) { member(id: "x", purpose: $p) { id } }',
            {"p": "personalized\x00offers"},
        ),
        (
            'mutation($v: EnrichmentValuesInput!) { recordEnrichment(memberId: "x", '
            'purpose: "p", source: "s", values: $v) { written } }',
            {"v": {"k\x00": 1}},
        ),
    ],
    ids=["in-a-literal", "in-a-variable", "in-a-key"],
)
async def test_a_nul_character_is_refused_before_it_reaches_the_database(
    api: Api, db: AsyncEngine, document: str, variables: Any
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    before = await row_counts(db)

    response = await api.graphql(document, variables, token=client.key)

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "NUL" in response.json()["errors"][0]["message"]
    assert await row_counts(db) == before


def test_measuring_fragment_doubling_takes_work_linear_in_the_document() -> None:
    document = parse(doubling(40))

    [found] = measure(schema._schema, document, Limits()).values()

    assert found.root_fields == 2**40
    # Each fragment is summed up once: two spreads per fragment, one field, one spread at the top.
    assert found.work <= 2 * 40 + 2


async def test_fragment_doubling_is_refused_whatever_the_operation_is_called(
    api: Api, db: AsyncEngine
) -> None:
    before = await row_counts(db)

    for name in ("A", "B"):
        response = await api.graphql(doubling(40, name))

        assert response.status_code == 400
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "OPERATION_LIMIT_EXCEEDED"
        assert "top-level fields" in error["message"]
    assert await row_counts(db) == before


async def test_deeply_nested_variables_are_a_400_with_a_code(api: Api, db: AsyncEngine) -> None:
    # Built by hand: Python's own JSON encoder recurses, and gives up before 1,000 levels.
    body = '{"query": "{ __typename }", "variables": {"v": ' + "[" * 1000 + "]" * 1000 + "}}"

    response = await api.http.post(
        "/graphql", content=body, headers={"Content-Type": "application/json", "Accept": ACCEPT}
    )

    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "OPERATION_LIMIT_EXCEEDED"
    assert "nest deeper than 16" in error["message"]


@pytest.mark.parametrize("character", ["\u202e", "\u2066", "\u0085", "\u2028", "\u0007"])
async def test_control_and_bidi_characters_are_refused_in_any_text(
    api: Api, db: AsyncEngine, character: str
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    before = await row_counts(db)
    grant = (
        'grantConsent(purpose: "personalized_offers", method: EXPLICIT, noticeVersion: "2024-01", '
        f'channel: CHANNEL, memberId: "{uuid.uuid4()}") {{ receiptId }}'
    )
    channel = f"web{character}shop"

    variable = await api.graphql(
        "mutation($c: String!) { " + grant.replace("CHANNEL", "$c") + " }",
        {"c": channel},
        token=client.key,
    )
    literal = await api.graphql(
        "mutation { " + grant.replace("CHANNEL", f'"{channel}"') + " }", token=client.key
    )

    assert variable.status_code == 400
    assert variable.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert f"U+{ord(character):04X}" in variable.json()["errors"][0]["message"]
    assert literal.status_code == 400
    assert literal.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await row_counts(db) == before


async def test_line_breaks_and_tabs_are_allowed_in_text(api: Api, db: AsyncEngine) -> None:
    member = await add_member(db)
    wording = "Ja, jeg vil ha tilbud.\n\tYes, I want offers.\r\n"

    response = await api.graphql(
        'mutation($e: String) { grantConsent(purpose: "personalized_offers", method: EXPLICIT, '
        'noticeVersion: "2026-01", channel: "web", evidence: $e) { evidenceSha256 } }',
        {"e": wording},
        token=member_token(member),
    )

    assert response.status_code == 200
    assert response.json()["data"]["grantConsent"]["evidenceSha256"] == (
        hashlib.sha256(wording.encode()).hexdigest()
    )


def test_every_refused_character_is_unprintable() -> None:
    """text_problem settles printable strings without its pattern: sound only while this holds."""
    from gateway.web.operations import _UNSAFE_TEXT

    refused = [chr(c) for c in range(0x110000) if _UNSAFE_TEXT.fullmatch(chr(c))]

    assert len(refused) == 76  # C0 less tab, LF, CR; DEL and C1; 14 bidi and separators
    assert not any(c.isprintable() for c in refused)
