"""CORS: web pages of the origins in TILLIT_CORS_ORIGINS may call the API; no other origin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import SettingsError
from gateway.settings import load_settings
from tests.conftest import Api, make_settings, serving

SHOP = "https://shop.example.org"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


@pytest.fixture
async def cors_api(db: AsyncEngine, gateway_url: str) -> AsyncIterator[Api]:
    async with serving(make_settings(gateway_url, cors_origins=SHOP), gateway_url) as api:
        yield api


async def test_a_preflight_from_an_allowed_origin_is_answered(cors_api: Api) -> None:
    response = await cors_api.http.options("/graphql", headers={"Origin": SHOP, **PREFLIGHT})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_a_call_from_an_allowed_origin_may_be_read_by_its_page(cors_api: Api) -> None:
    response = await cors_api.graphql("{ __typename }", headers={"Origin": SHOP})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP


async def test_another_origin_is_refused(cors_api: Api) -> None:
    preflight = await cors_api.http.options(
        "/graphql", headers={"Origin": "https://evil.example.com", **PREFLIGHT}
    )
    call = await cors_api.graphql("{ __typename }", headers={"Origin": "https://evil.example.com"})

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in call.headers


async def test_no_origin_is_allowed_by_default(api: Api) -> None:
    response = await api.http.options("/graphql", headers={"Origin": SHOP, **PREFLIGHT})

    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origins", ["*", "shop.example.org", "https://shop.example.org/path"])
def test_an_origin_that_is_not_plain_is_refused_at_start(origins: str) -> None:
    with pytest.raises(SettingsError, match="TILLIT_CORS_ORIGINS"):
        load_settings(dev=True, cors_origins=origins)
