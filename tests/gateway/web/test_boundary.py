"""The operation boundary: /graphql, /me/export and /audit/export authenticate, rate-limit, audit
and fail alike, because they run through one boundary."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Role
from tests.conftest import (
    Api,
    add_client,
    add_member,
    make_settings,
    member_token,
    row_counts,
    serving,
)
from tests.helpers import access_events, audit_writes_fail

PURPOSES = "{ purposes { key } }"
RANGE = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "format": "csv"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def code_of(body: dict[str, Any]) -> str:
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def test_the_exports_are_rate_limited_like_graphql(db: AsyncEngine, gateway_url: str) -> None:
    """One bucket per caller, whichever route it calls (it was /graphql's alone)."""
    member = member_token(await add_member(db))
    auditor = (await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())).key
    limited = make_settings(gateway_url, rate_limit_per_second=0.2, rate_limit_burst=1)
    async with serving(limited, gateway_url) as api:
        first = await api.graphql(PURPOSES, token=member)
        my_export = await api.http.get("/me/export", headers=bearer(member))
        await api.http.get("/audit/export", params=RANGE, headers=bearer(auditor))
        audit_export = await api.http.get("/audit/export", params=RANGE, headers=bearer(auditor))

    assert first.status_code == 200
    for refused in (my_export, audit_export):
        assert refused.status_code == 429
        assert code_of(refused.json()) == "RATE_LIMITED"
        assert int(refused.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("route", ["/me/export", "/audit/export", "/audit/export/manifest"])
async def test_no_credentials_are_401_with_a_challenge_and_leave_no_trace(
    api: Api, db: AsyncEngine, route: str
) -> None:
    before = await row_counts(db)

    response = await api.http.get(route, params=RANGE, headers=bearer("tk_nonsense"))

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tillit"'
    assert code_of(response.json()) == "UNAUTHENTICATED"
    assert await row_counts(db) == before


async def test_an_audit_export_by_an_app_is_refused_and_the_refusal_audited(
    api: Api, db: AsyncEngine
) -> None:
    shop = await add_client(db, name="shop")

    response = await api.http.get("/audit/export", params=RANGE, headers=bearer(shop.key))

    assert response.status_code == 403
    assert code_of(response.json()) == "FORBIDDEN"
    [event] = await access_events(db)
    assert (event["operation"], event["outcome"]) == ("auditExport", "DENIED")
    assert event["details"] == {"reason": "FORBIDDEN"}
    assert event["client_id"] == shop.id


async def test_a_bad_export_range_is_a_400_and_audited(api: Api, db: AsyncEngine) -> None:
    auditor = (await add_client(db, name="dpo", role=Role.AUDITOR, purposes=())).key

    response = await api.http.get(
        "/audit/export", params={**RANGE, "from": "yesterday"}, headers=bearer(auditor)
    )

    assert response.status_code == 400
    assert code_of(response.json()) == "BAD_USER_INPUT"
    [event] = await access_events(db)
    assert (event["operation"], event["outcome"]) == ("auditExport", "DENIED")
    assert event["details"] == {"reason": "BAD_USER_INPUT"}


async def test_a_member_export_refused_to_an_app_is_audited_once(api: Api, db: AsyncEngine) -> None:
    shop = await add_client(db, name="shop")

    response = await api.http.get("/me/export", headers=bearer(shop.key))

    assert response.status_code == 403
    [event] = await access_events(db)
    assert (event["operation"], event["outcome"]) == ("exportMyData", "DENIED")


async def test_a_member_export_fails_closed_when_the_audit_write_fails(
    api: Api, db: AsyncEngine
) -> None:
    member_id = await add_member(db, first_name="Sensitive")
    async with audit_writes_fail(db):
        before = await row_counts(db)
        response = await api.http.get("/me/export", headers=bearer(member_token(member_id)))
        after = await row_counts(db)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert code_of(response.json()) == "AUDIT_UNAVAILABLE"
    assert "Sensitive" not in response.text
    assert after == before
