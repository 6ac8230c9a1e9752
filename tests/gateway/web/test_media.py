"""GraphQL over HTTP's two response media types: which one is chosen, and the status codes and
body shapes each gives (the GraphQL Foundation's specification; its audit suite runs in CI)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.web.media import GRAPHQL_RESPONSE_JSON, JSON, negotiate
from tests.conftest import Api, add_client


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/graphql-response+json", GRAPHQL_RESPONSE_JSON),
        ("application/graphql-response+json, application/json;q=0.9", GRAPHQL_RESPONSE_JSON),
        ("application/json;q=0.9, application/graphql-response+json", GRAPHQL_RESPONSE_JSON),
        ("application/json, application/graphql-response+json", JSON),
        ("application/graphql-response+json;q=0, application/json", JSON),
        ("text/html, */*;q=0.1", JSON),
        ("application/*", JSON),
        ("text/html", None),
        ("application/graphql-response+json;q=0", None),
    ],
)
def test_the_media_type_follows_the_accept_header(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept) == chosen


REQUEST_ERRORS = [
    ("{", "GRAPHQL_PARSE_FAILED"),
    ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
    ('query($id: ID!) { member(id: $id, purpose: "x") { id } }', "BAD_USER_INPUT"),
]


@pytest.mark.parametrize(("query", "code"), REQUEST_ERRORS, ids=["parse", "validation", "vars"])
async def test_a_request_error_is_400_without_data_in_the_graphql_response_type(
    api: Api, query: str, code: str
) -> None:
    response = await api.graphql(query, headers={"Accept": GRAPHQL_RESPONSE_JSON})

    assert response.status_code == 400
    assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE_JSON)
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == code


@pytest.mark.parametrize(("query", "code"), REQUEST_ERRORS, ids=["parse", "validation", "vars"])
@pytest.mark.parametrize("accept", ["application/json", None])
async def test_a_request_error_is_200_without_data_in_the_legacy_json_type(
    api: Api, query: str, code: str, accept: str | None
) -> None:
    response = await api.http.post(
        "/graphql", json={"query": query}, headers={"Accept": accept} if accept else {}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == code


@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE_JSON, JSON])
async def test_a_withheld_field_is_200_with_data_in_either_type(
    api: Api, db: AsyncEngine, accept: str
) -> None:
    response = await api.graphql(
        '{ member(id: "00000000-0000-4000-8000-000000000000", purpose: "membership_service") '
        "{ id } }",
        headers={"Accept": accept},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(accept)
    body = response.json()
    assert body["data"] == {"member": None}
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("accept", [GRAPHQL_RESPONSE_JSON, JSON])
async def test_a_request_that_is_not_graphql_is_400_in_either_type(api: Api, accept: str) -> None:
    response = await api.http.post(
        "/graphql",
        content=b'{"not a JSON',
        headers={"Content-Type": "application/json", "Accept": accept},
    )

    assert response.status_code == 400
    assert response.headers["content-type"].startswith(accept)
    assert "data" not in response.json()


async def test_a_wrong_key_is_401_in_either_type(api: Api, db: AsyncEngine) -> None:
    await add_client(db)
    for accept in (GRAPHQL_RESPONSE_JSON, JSON):
        response = await api.graphql(
            "{ purposes { key } }", token="tk_aaaaaaaaaaaa_" + "x" * 43, headers={"Accept": accept}
        )

        assert response.status_code == 401
        assert "data" not in response.json()
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_an_unsupported_accept_is_406(api: Api) -> None:
    response = await api.graphql("{ __typename }", headers={"Accept": "text/html"})

    assert response.status_code == 406
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("extensions", ["string", 0, False, ["array"]])
async def test_extensions_other_than_an_object_are_400(api: Api, extensions: object) -> None:
    response = await api.http.post(
        "/graphql", json={"query": "{ __typename }", "extensions": extensions}
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
