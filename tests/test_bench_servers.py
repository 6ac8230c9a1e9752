"""The benchmark compares like with like: for a consenting member, Tillit, the raw endpoint and
the bare Strawberry schema answer the benchmark's requests with the same data."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.seed import seed_events
from bench.servers import bare_app, raw_app, unaudited
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import TEST_SIGNER, Api, add_client, add_member
from tests.helpers import enrich, grant

WRK = Path(__file__).resolve().parent.parent / "bench" / "wrk"


@pytest.fixture
async def reference(
    db: AsyncEngine, database_url: str
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    clients = {}
    async with (
        LifespanManager(raw_app(database_url)) as raw,
        LifespanManager(bare_app(database_url)) as bare,
    ):
        for name, manager in (("raw", raw), ("bare", bare)):
            clients[name] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://bench.test"
            )
        yield clients
        for client in clients.values():
            await client.aclose()


MEMBER = (
    "query($id: ID!, $purpose: String!) { member(id: $id, purpose: $purpose) "
    "{ id tier points memberSince incomeBand householdSize lifestyleSegment } }"
)
MEMBERS = (
    "query($ids: [ID!]!, $purpose: String!) { members(ids: $ids, purpose: $purpose) "
    "{ id tier points memberSince incomeBand householdSize lifestyleSegment } }"
)


def test_the_wrk_scripts_send_these_documents() -> None:
    member = (WRK / "member.lua").read_text(encoding="utf-8")
    members = (WRK / "members.lua").read_text(encoding="utf-8")
    for field in (
        "tier",
        "points",
        "memberSince",
        "incomeBand",
        "householdSize",
        "lifestyleSegment",
    ):
        assert field in member
        assert field in members
    assert "personalized_offers" in member


async def test_all_three_servers_answer_the_same_data(
    api: Api, db: AsyncEngine, reference: dict[str, httpx.AsyncClient]
) -> None:
    members = [await add_member(db) for _ in range(3)]
    for member_id in members:
        grant_id = await grant(db, member_id, "personalized_offers")
        await enrich(db, member_id, grant_id)
    key = (await add_client(db, name="bench-app", purposes=("personalized_offers",))).key
    requests: list[tuple[str, dict[str, Any]]] = [
        (MEMBER, {"id": str(members[0]), "purpose": "personalized_offers"}),
        (MEMBERS, {"ids": [str(m) for m in members], "purpose": "personalized_offers"}),
    ]
    for query, variables in requests:
        tillit = (await api.graphql(query, variables, token=key)).json()
        answers = {
            name: (
                await client.post("/graphql", json={"query": query, "variables": variables})
            ).json()
            for name, client in reference.items()
        }

        assert "errors" not in tillit, tillit
        assert answers["raw"] == tillit
        assert answers["bare"] == tillit
        assert json.dumps(tillit).count("active_outdoor") == (
            1 if query == MEMBER else len(members)
        )


async def test_the_unaudited_reference_answers_as_tillit_does_and_writes_no_events(
    api: Api, db: AsyncEngine, gateway_url: str, settings: Settings
) -> None:
    """`tillit-unaudited` is Tillit less its audit trail's writes, nothing else: the same answers
    (withheld fields included), and no access event, where Tillit writes one a member."""
    members = [await add_member(db) for _ in range(2)]
    grant_id = await grant(db, members[0], "personalized_offers")
    await enrich(db, members[0], grant_id)  # the other member has no consent to read under
    key = (await add_client(db, name="bench-app", purposes=("personalized_offers",))).key
    variables = {"ids": [str(m) for m in members], "purpose": "personalized_offers"}

    async def events() -> int:
        async with db.connect() as connection:
            return int(await connection.scalar(text("SELECT count(*) FROM access_events")))

    before = await events()
    tillit = (await api.graphql(MEMBERS, variables, token=key)).json()
    assert await events() == before + len(members)
    app = unaudited(create_app(settings, database_url=gateway_url))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://bench.test"
        ) as client,
    ):
        answer = (
            await client.post(
                "/graphql",
                json={"query": MEMBERS, "variables": variables},
                headers={"Authorization": f"Bearer {key}"},
            )
        ).json()

    assert answer == tillit
    # Withheld from the member without consent only, as Tillit withholds them.
    assert {(e["path"][1], e["extensions"]["code"]) for e in answer["errors"]} == {
        (1, "CONSENT_REQUIRED")
    }
    assert await events() == before + len(members)


async def test_the_benchmark_seeds_events_from_before_this_month_began(db: AsyncEngine) -> None:
    """`make bench` runs on any day: its events reach back past the first of the month (a
    million a second apart is 11.6 days; these 40 days) and all land in partitions and seals."""
    await seed_events(db, count=200, signer=TEST_SIGNER, spacing_seconds=40 * 86_400 / 200)

    async with db.connect() as connection:
        sealed = await connection.scalar(text("SELECT count(*) FROM audit_seals"))
        oldest = await connection.scalar(text("SELECT min(occurred_at) FROM access_events"))
    assert sealed == 200
    assert oldest < dt.datetime.now(dt.UTC) - dt.timedelta(days=39)


# -- the peer (PostGraphile) ----------------------------------------------------------------------

PEER_VIEW = (
    "query($id: UUID!) { memberViewById(id: $id) "
    "{ id tier points memberSince incomeBand householdSize lifestyleSegment } }"
)
PEER_AUDITED = (
    'query($id: UUID!) { memberForPurpose(memberId: $id, purpose: "personalized_offers") '
    "{ id tier points memberSince incomeBand householdSize lifestyleSegment } }"
)


@pytest.fixture
async def postgraphile(db: AsyncEngine, database_url: str, gateway_url: str) -> AsyncIterator[str]:
    """The benchmark's peer, from its lock file, on the test database as the restricted login."""
    import os
    import shutil
    import subprocess

    from bench import peer
    from bench.serving import free_port

    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install npm (see .ci/run)")
        pytest.skip("needs Node.js and npm: apt-get install nodejs npm")
    peer.install()
    await peer.prepare(database_url)
    port = free_port()
    url = make_url(gateway_url).set(drivername="postgresql").render_as_string(hide_password=False)
    process = subprocess.Popen(  # noqa: S603, ASYNC220  # node and the peer's script; returns at once
        peer.command(),
        env={
            **os.environ,
            "PEER_PORT": str(port),
            "PEER_DATABASE_URL": url,
            "PEER_JWT_SECRET": PEER_SECRET,
            "NODE_ENV": "production",
        },
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    await http.post(
                        f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"}
                    )
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        process.terminate()
        process.wait(timeout=10)
        async with db.begin() as connection:
            await connection.execute(text("DROP SCHEMA bench_peer CASCADE"))


PEER_SECRET = "peer-test-secret-" + "x" * 32


async def test_the_peer_answers_as_tillit_does_and_audits_its_reads(
    api: Api, db: AsyncEngine, postgraphile: str
) -> None:
    from bench import peer

    consenting, other = await add_member(db), await add_member(db)
    await enrich(db, consenting, await grant(db, consenting, "personalized_offers"))
    client = await add_client(db, name="bench-app", purposes=("personalized_offers",))
    token = peer.token(PEER_SECRET, str(client.id))

    async with httpx.AsyncClient() as http:
        for member_id in (consenting, other):
            tillit = (
                await api.graphql(
                    MEMBER,
                    {"id": str(member_id), "purpose": "personalized_offers"},
                    token=client.key,
                )
            ).json()["data"]["member"]
            audited = (
                await http.post(
                    postgraphile,
                    json={"query": PEER_AUDITED, "variables": {"id": str(member_id)}},
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).json()
            view = (
                await http.post(
                    postgraphile, json={"query": PEER_VIEW, "variables": {"id": str(member_id)}}
                )
            ).json()

            assert audited["data"]["memberForPurpose"] == tillit, audited
            if member_id == consenting:  # the plain view checks nothing: all six, always
                assert view["data"]["memberViewById"] == tillit
        # Without a token the audited function refuses: the client is not allowed the purpose.
        refused = (
            await http.post(
                postgraphile, json={"query": PEER_AUDITED, "variables": {"id": str(consenting)}}
            )
        ).json()
    assert refused["data"]["memberForPurpose"] is None
    assert "purpose not permitted" in refused["errors"][0]["message"]

    async with db.connect() as connection:
        outcomes = sorted(
            row.outcome
            for row in await connection.execute(
                text(
                    "SELECT outcome FROM access_events WHERE client_id = :client "
                    "AND request_id !~ '^[0-9a-f]{32}$'"
                ),
                {"client": client.id},
            )
        )
    assert outcomes == ["DENIED", "RELEASED"]
