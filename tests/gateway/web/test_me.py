"""The self-service page's Content-Security-Policy: its own script runs, no other inline one."""

from __future__ import annotations

import re

from tests.conftest import Api

_SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        parsed[name.lower()] = values
    return parsed


async def test_only_the_pages_own_script_may_run(api: Api) -> None:
    first, second = await api.http.get("/me"), await api.http.get("/me")

    nonces = []
    for response in (first, second):
        assert response.status_code == 200
        script_src = directives(response.headers["content-security-policy"])["script-src"]
        assert not {"'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*"} & set(script_src)
        (nonce,) = (s[len("'nonce-") : -1] for s in script_src if s.startswith("'nonce-"))
        assert len(nonce) >= 22  # at least 128 random bits
        tags = _SCRIPT_TAG.findall(response.text)
        assert tags
        assert all(tag == f'<script nonce="{nonce}">' for tag in tags)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]  # per response: a nonce seen once is no use later


async def test_the_page_keeps_its_other_protections(api: Api) -> None:
    response = await api.http.get("/me")

    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
