"""GET /metrics: Prometheus text for the monitoring system's token only, never for app clients."""

from __future__ import annotations

import re

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import add_client, add_member, make_settings, serving
from tests.helpers import grant

METRICS_TOKEN = "metrics-" + "k" * 40
ONE = 'query($id: ID!) { member(id: $id, purpose: "personalized_offers") { id incomeBand } }'


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
    return 0.0


async def test_metrics_count_requests_decisions_and_audit_writes(
    db: AsyncEngine, gateway_url: str
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    consenting, other = await add_member(db), await add_member(db)
    await grant(db, consenting, "personalized_offers")
    settings = make_settings(gateway_url, metrics_token=METRICS_TOKEN)
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with serving(settings, gateway_url) as api:
        before = (await api.http.get("/metrics", headers=auth)).text
        await api.graphql(ONE, {"id": str(consenting)}, token=client.key)
        await api.graphql(ONE, {"id": str(other)}, token=client.key)
        response = await api.http.get("/metrics", headers=auth)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("tillit_requests_total", operation="member", status="200") == 2
    assert grew("tillit_request_duration_seconds_count", operation="member") == 2
    assert grew("tillit_access_decisions_total", purpose="personalized_offers", outcome="RELEASED")
    assert grew("tillit_access_decisions_total", purpose="personalized_offers", outcome="DENIED")
    assert grew("tillit_audit_write_duration_seconds_count") == 2
    assert grew("tillit_audit_events_written_total") == 2
    for name in ("tillit_db_pool_connections", "tillit_sealer_lag_seconds"):
        assert name in after
    assert str(consenting) not in after  # labels never carry ids


async def test_a_set_read_counts_the_decisions_and_events_it_wrote_itself(
    db: AsyncEngine, gateway_url: str
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    consenting, other = await add_member(db), await add_member(db)
    await grant(db, consenting, "personalized_offers")
    ids = [str(consenting), str(other), "00000000-0000-4000-8000-000000000000"]
    many = 'query($ids: [ID!]!) { members(ids: $ids, purpose: "personalized_offers") { tier } }'
    settings = make_settings(gateway_url, metrics_token=METRICS_TOKEN)
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with serving(settings, gateway_url) as api:
        before = (await api.http.get("/metrics", headers=auth)).text
        await api.graphql(many, {"ids": ids}, token=client.key)
        after = (await api.http.get("/metrics", headers=auth)).text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    purpose = "personalized_offers"
    assert grew("tillit_access_decisions_total", purpose=purpose, outcome="RELEASED") == 1
    assert grew("tillit_access_decisions_total", purpose=purpose, outcome="DENIED") == 1
    assert grew("tillit_access_decisions_total", purpose=purpose, outcome="NOT_FOUND") == 1
    assert grew("tillit_audit_events_written_total") == 3


async def test_a_purpose_outside_the_policy_is_not_a_label(
    db: AsyncEngine, gateway_url: str
) -> None:
    client = await add_client(db, purposes=("personalized_offers",))
    member_id = await add_member(db)
    settings = make_settings(gateway_url, metrics_token=METRICS_TOKEN)
    query = 'query($id: ID!) { member(id: $id, purpose: "made-up-purpose-1") { id } }'
    async with serving(settings, gateway_url) as api:
        await api.graphql(query, {"id": str(member_id)}, token=client.key)
        text = (
            await api.http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        ).text

    assert "made-up-purpose-1" not in text
    assert 'purpose="other"' in text


async def test_metrics_are_not_for_app_clients(db: AsyncEngine, gateway_url: str) -> None:
    client = await add_client(db)
    with_token = make_settings(gateway_url, metrics_token=METRICS_TOKEN)
    async with serving(with_token, gateway_url) as api:
        anonymous = await api.http.get("/metrics")
        app_key = await api.http.get("/metrics", headers={"Authorization": f"Bearer {client.key}"})
    async with serving(make_settings(gateway_url), gateway_url) as api:
        unconfigured = await api.http.get(
            "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )

    assert anonymous.status_code == 401
    assert app_key.status_code == 401
    assert "tillit_" not in app_key.text
    assert unconfigured.status_code == 404
