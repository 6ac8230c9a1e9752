"""GraphQL over HTTP: malformed requests, credentials, and that refused requests write nothing."""

from __future__ import annotations

import datetime as dt
import uuid

import jwt
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.auth import generate_key, mint_member_token
from tests.conftest import (
    TEST_SECRET,
    Api,
    add_client,
    add_member,
    make_settings,
    row_counts,
    serving,
)

PURPOSES = "{ purposes { key } }"
MEMBER = "query($id: ID!, $purpose: String!) { member(id: $id, purpose: $purpose) { email } }"


def code_of(body: dict[str, object]) -> str:
    errors = body["errors"]
    assert isinstance(errors, list)
    code: str = errors[0]["extensions"]["code"]
    return code


@pytest.mark.parametrize(
    ("content", "content_type", "message"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"[]", "application/json", "Batched requests are off"),
        (b'{"variables": {}}', "application/json", "non-empty `query`"),
        (b'{"query": 42}', "application/json", "non-empty `query`"),
        (b'{"query": "{ purposes { key } }", "variables": [1]}', "application/json", "variables"),
        (
            b'{"query": "{ purposes { key } }", "operationName": 1}',
            "application/json",
            "operationName",
        ),
        (b"query { purposes { key } }", "text/plain", "Content-Type"),
        (b"\xff\xfe", "application/json", "not valid JSON"),
    ],
    ids=[
        "malformed-json",
        "batch-while-batching-is-off",
        "no-query",
        "query-not-string",
        "variables-not-object",
        "operation-name-not-string",
        "not-json",
        "bad-encoding",
    ],
)
async def test_request_that_is_not_graphql_is_400_with_a_graphql_error(
    api: Api, db: AsyncEngine, content: bytes, content_type: str, message: str
) -> None:
    before = await row_counts(db)

    response = await api.http.post(
        "/graphql", content=content, headers={"Content-Type": content_type}
    )

    assert response.status_code == 400
    body = response.json()
    assert code_of(body) == "BAD_REQUEST"
    assert message in body["errors"][0]["message"]
    assert await row_counts(db) == before


async def test_oversized_body_is_refused(api: Api) -> None:
    response = await api.http.post(
        "/graphql",
        content=b'{"query": "' + b" " * 1_100_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 413


async def test_syntax_error_is_400_with_parse_code(api: Api) -> None:
    response = await api.graphql("{ purposes { key ")

    assert response.status_code == 400
    assert code_of(response.json()) == "GRAPHQL_PARSE_FAILED"


async def test_unknown_field_is_400_with_validation_code(api: Api) -> None:
    response = await api.graphql("{ purposes { shoeSize } }")

    assert response.status_code == 400
    assert code_of(response.json()) == "GRAPHQL_VALIDATION_FAILED"


async def test_missing_variable_is_bad_user_input(api: Api) -> None:
    response = await api.graphql(MEMBER, {"purpose": "membership_service"})

    assert response.status_code == 400
    assert code_of(response.json()) == "BAD_USER_INPUT"


async def test_purposes_are_public(api: Api) -> None:
    response = await api.graphql(
        "{ purposes { key legalBasis categories requiredConsentMethod consentLifetimeDays "
        "noticeVersion acceptedNoticeVersions title { nb en } description { nb en } } }"
    )

    assert response.status_code == 200
    purposes = {p["key"]: p for p in response.json()["data"]["purposes"]}
    assert set(purposes) == {
        "membership_service",
        "personalized_offers",
        "email_marketing",
        "customer_insight",
        "data_quality",
    }
    offers = purposes["personalized_offers"]
    assert offers["legalBasis"] == "CONSENT"
    assert offers["requiredConsentMethod"] == "EXPLICIT"
    assert offers["consentLifetimeDays"] == 365
    assert offers["categories"] == ["MEMBERSHIP", "ENRICHED_DEMOGRAPHICS", "ENRICHED_LIFESTYLE"]
    assert offers["title"] == {"nb": "Personlige tilbud", "en": "Personalised offers"}
    assert purposes["membership_service"]["requiredConsentMethod"] is None
    assert purposes["data_quality"]["legalBasis"] == "LEGITIMATE_INTEREST"


def _expired_token() -> str:
    return mint_member_token(uuid.uuid4(), TEST_SECRET, dt.timedelta(seconds=-120))


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer " + generate_key().key,
        "Bearer tk_short",
        "Bearer " + "x" * 5000,
        "Token abc",
        "Bearer " + jwt.encode({"sub": str(uuid.uuid4())}, TEST_SECRET),
        "Bearer "
        + jwt.encode(
            {"sub": str(uuid.uuid4()), "exp": 9999999999}, "wrong-key-wrong-key-wrong-key-wrong"
        ),
        "expired",
    ],
    ids=[
        "unknown-key",
        "malformed-key",
        "huge",
        "wrong-scheme",
        "token-without-exp",
        "token-wrong-signature",
        "expired-token",
    ],
)
async def test_bad_credentials_are_401_unauthenticated_and_write_nothing(
    api: Api, db: AsyncEngine, credential: str
) -> None:
    if credential == "expired":
        credential = "Bearer " + _expired_token()
    before = await row_counts(db)

    response = await api.http.post(
        "/graphql", json={"query": PURPOSES}, headers={"Authorization": credential}
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert code_of(body) == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == (
        "Authentication required: send a valid API key or member token."
    )
    assert await row_counts(db) == before


async def test_anonymous_member_read_is_unauthenticated(api: Api, db: AsyncEngine) -> None:
    member_id = await add_member(db)

    response = await api.graphql(MEMBER, {"id": str(member_id), "purpose": "membership_service"})

    body = response.json()
    assert body["data"] == {"member": None}
    assert code_of(body) == "UNAUTHENTICATED"


async def test_unknown_purpose_is_refused_and_only_audited(api: Api, db: AsyncEngine) -> None:
    client = await add_client(db)
    member_id = await add_member(db)
    before = await row_counts(db)

    response = await api.graphql(
        MEMBER, {"id": str(member_id), "purpose": "telemarketing"}, token=client.key
    )

    body = response.json()
    assert body["data"] == {"member": None}
    assert code_of(body) == "UNKNOWN_PURPOSE"
    assert body["errors"][0]["extensions"]["purpose"] == "telemarketing"
    assert "@" not in response.text
    after = await row_counts(db)
    assert after.pop("access_events") == before.pop("access_events") + 1
    assert after == before


def requests_counted(operation: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "tillit_requests_total", {"operation": operation, "status": str(status)}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("accept", "sent"),
    [("application/graphql-response+json", 400), ("application/json", 200)],
    ids=["graphql-response-json", "legacy-json"],
)
async def test_the_request_metric_counts_the_status_that_was_sent(
    api: Api, accept: str, sent: int
) -> None:
    before = {status: requests_counted("invalid", status) for status in (200, 400)}

    response = await api.http.post(
        "/graphql", json={"query": "{ purposes {"}, headers={"Accept": accept}
    )

    assert response.status_code == sent
    assert code_of(response.json()) == "GRAPHQL_PARSE_FAILED"
    after = {status: requests_counted("invalid", status) for status in (200, 400)}
    assert after == {**before, sent: before[sent] + 1}


async def test_each_operation_of_a_batch_is_counted_with_the_batch_status(
    db: AsyncEngine, gateway_url: str
) -> None:
    before = {status: requests_counted("invalid", status) for status in (200, 400)}

    async with serving(make_settings(gateway_url, max_batch=2), gateway_url) as api:
        response = await api.http.post(
            "/graphql",
            json=[{"query": "{ purposes {"}, {"query": "{ purposes { key } }"}],
            headers={"Accept": "application/graphql-response+json"},
        )

    assert response.status_code == 200
    assert [("data" in answer) for answer in response.json()] == [False, True]
    after = {status: requests_counted("invalid", status) for status in (200, 400)}
    assert after == {200: before[200] + 1, 400: before[400]}
