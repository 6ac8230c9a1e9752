"""The direct executor for the consent changes answers exactly what graphql-core answers.

Generated `grantConsent`/`withdrawConsent` operations of the shape it takes (leaf fields, aliases,
repeats, literals or variables, real, unknown and malformed member ids, purposes on consent and on
other grounds, methods, notices, evidence or none, an idempotency key sent twice) run through two
apps on one database, one with the direct executors and one without, each on a member of its own
in the same state; the bodies must be equal once each member's own ids and times are named
alike, and so must the access events and consent events each wrote.
"""

from __future__ import annotations

import re
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
from gateway.web.fastwrite import WritePath
from schema import schema
from tests.conftest import add_client, add_member, make_settings, serving
from tests.helpers import enrich, grant

RECEIPT = [
    "receiptId",
    "version",
    "jurisdiction",
    "controller",
    "memberId",
    "purpose",
    "legalBasis",
    "dataCategories",
    "method",
    "noticeVersion",
    "grantedAt",
    "expiresAt",
    "channel",
    "collectedBy",
    "evidenceSha256",
    "replayed",
    "__typename",
]
WITHDRAWAL = [
    "withdrawn",
    "message",
    "memberId",
    "purpose",
    "eventId",
    "withdrawnAt",
    "purgedFields",
    "replayed",
    "__typename",
]
PURPOSES = ["customer_insight", "personalized_offers", "membership_service", "nope"]
KEY: list[str] = []

S3 = (
    'mutation($m: ID!) { grantConsent(memberId: $m, purpose: "customer_insight", '
    'method: CONDITIONAL, noticeVersion: "2026-01", channel: "bench", evidence: "bench") '
    "{ receiptId } }"
)


def test_a_plan_is_made_only_for_the_shape_it_handles() -> None:
    fast = WritePath(schema)

    def plan(source: str) -> object:
        document = parse(source)
        operation = document.definitions[0]
        return fast.plan(document, operation, None)  # type: ignore[arg-type]

    assert plan(S3) is not None
    assert plan('mutation { withdrawConsent(purpose: "p") { a: withdrawn b: eventId } }')
    assert plan('mutation { withdrawConsent(purpose: "p") { withdrawn @skip(if: true) } }') is None
    assert (
        plan('mutation { withdrawConsent(purpose: "p") { ... on WithdrawalResult { withdrawn } } }')
        is None
    )
    assert plan(S3.replace("{ receiptId }", "{ purposeTitle { en } }")) is None
    assert (
        plan(
            'mutation { a: withdrawConsent(purpose: "p") { withdrawn } '
            'b: withdrawConsent(purpose: "q") { withdrawn } }'
        )
        is None
    )
    assert plan('mutation { objectTo(purpose: "p") { purpose } }') is None
    assert plan("query { purposes { key } }") is None


def _value(draw: Any, value: Any, alternatives: list[Any]) -> Any:
    return draw(st.sampled_from([value, *alternatives]))


@st.composite
def operations(draw: Any) -> tuple[str, dict[str, Any], bool]:
    """A document with `$m` for the member (or a literal stand-in), its variables, and whether
    the member starts with the consent granted."""
    grant_ = draw(st.booleans())
    fields = draw(
        st.lists(st.sampled_from(RECEIPT if grant_ else WITHDRAWAL), min_size=1, max_size=6)
    )
    selection = " ".join(
        name if not draw(st.booleans()) else f"k{i}: {name}" for i, name in enumerate(fields)
    )
    purpose = draw(st.sampled_from(PURPOSES))
    member = draw(st.sampled_from(["$m", '"not-a-uuid"', f'"{uuid.uuid4()}"']))
    variables: dict[str, Any] = {}
    heads = ["$m: ID!"] if member == "$m" else []
    key = draw(st.none() | st.sampled_from(["k-1", ""]))
    if grant_:
        method = draw(st.sampled_from(["EXPLICIT", "CONDITIONAL"]))
        notice = draw(st.sampled_from(["2026-01", "2025-01"]))
        evidence = draw(st.sampled_from(['evidence: "shown"', 'evidenceSha256: "abc"', ""]))
        if draw(st.booleans()):
            heads.append("$method: ConsentMethod!")
            args = f'purpose: "{purpose}", method: $method'
            variables["method"] = draw(st.sampled_from([method, "SHOUTED", 3]))
        else:
            args = f'purpose: "{purpose}", method: {method}'
        args += f', noticeVersion: "{notice}", channel: "app", {evidence}'
        root = "grantConsent"
    else:
        args = f'purpose: "{purpose}"'
        if draw(st.booleans()):
            heads.append("$channel: String!")
            args += ", channel: $channel"
            variables["channel"] = draw(st.sampled_from(["app", "", None]))
        root = "withdrawConsent"
    if key is not None:
        args += f', idempotencyKey: "{key}"'
    alias = "c: " if draw(st.booleans()) else ""
    head = f"mutation({', '.join(heads)})" if heads else "mutation"
    document = f"{head} {{ {alias}{root}(memberId: {member}, {args}) {{ {selection} }} }}"
    return document, variables, draw(st.booleans())


_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def _named(value: Any, member: uuid.UUID) -> Any:
    """The value with the member's id, other ids and times named alike."""
    encoded = orjson.dumps(value, default=str).replace(str(member).encode(), b"MEMBER")
    return orjson.loads(_TIME.sub(b"TIME", _UUID.sub(b"ID", encoded)))


async def written(db: AsyncEngine, request_id: str, member: uuid.UUID) -> Any:
    async with db.connect() as connection:
        access = await connection.execute(
            text(
                "SELECT operation, actor_kind, member_id, purpose, legal_basis, outcome, "
                "fields_requested, fields_released, fields_withheld, details, "
                "cardinality(consent_ids) AS consents FROM access_events "
                "WHERE request_id = :r ORDER BY id"
            ),
            {"r": request_id},
        )
        consents = await connection.execute(
            text(
                "SELECT purpose_key, kind, method, notice_version, channel, actor_kind, "
                "evidence, evidence_sha256, idempotency_key FROM consent_events "
                "WHERE member_id = :m ORDER BY seq"
            ),
            {"m": member},
        )
        return _named(
            [[dict(row._mapping) for row in access], [dict(row._mapping) for row in consents]],
            member,
        )


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_direct_executor_answers_what_graphql_core_answers(
    db: AsyncEngine, gateway_url: str, client_key: str, data: Any
) -> None:
    document, variables, granted = data.draw(operations(), label="operation")
    number = uuid.uuid4().hex
    async with AsyncExitStack() as stack:
        fast = await stack.enter_async_context(serving(make_settings(gateway_url), gateway_url))
        slow = await stack.enter_async_context(
            serving(make_settings(gateway_url, fast_path=False), gateway_url)
        )
        outcomes = []
        for api, tag in ((fast, "fast"), (slow, "slow")):
            member = await add_member(db)
            if granted:
                await enrich(db, member, await grant(db, member, "customer_insight"))
            answers = []
            for attempt in range(2):  # twice: an idempotency key replays, a withdrawal is done
                response = await api.graphql(
                    document.replace('"$m"', "$m"),
                    {**variables, "m": str(member)} if "$m" in document else variables or None,
                    token=client_key,
                    headers={"X-Request-ID": f"{tag}-{number}-{attempt}"},
                )
                answers.append((response.status_code, _named(response.json(), member)))
                answers.append(await written(db, f"{tag}-{number}-{attempt}", member))
            outcomes.append(answers)

    assert outcomes[0] == outcomes[1]


@pytest.fixture
async def client_key(db: AsyncEngine) -> str:
    client = await add_client(
        db,
        name=f"writer-{uuid.uuid4().hex[:8]}",
        purposes=("personalized_offers", "membership_service", "customer_insight"),
        capabilities=(Capability.CAPTURE_CONSENT,),
    )
    return client.key


async def test_the_consent_changes_do_not_use_the_general_executor(
    db: AsyncEngine, gateway_url: str, client_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.web.graphql import GraphQLEndpoint

    async def general(*_: Any, **__: Any) -> Any:
        raise AssertionError("the general path ran")

    monkeypatch.setattr(GraphQLEndpoint, "_run_document", general)
    member = await add_member(db)
    async with serving(make_settings(gateway_url), gateway_url) as api:
        granted = await api.graphql(S3, {"m": str(member)}, token=client_key)
        withdrawn = await api.graphql(
            'mutation($m: ID!) { withdrawConsent(memberId: $m, purpose: "customer_insight") '
            "{ withdrawn purgedFields } }",
            {"m": str(member)},
            token=client_key,
        )

    assert granted.status_code == 200
    assert uuid.UUID(granted.json()["data"]["grantConsent"]["receiptId"])
    assert withdrawn.json() == {
        "data": {"withdrawConsent": {"withdrawn": True, "purgedFields": []}}
    }
