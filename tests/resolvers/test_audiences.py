"""The `audience` field: the members a purpose may reach now, selected, paged and audited.

Each test asks POST /graphql for a page and checks who is on it, what was released, and the
access events it left.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain import Capability
from tests.conftest import Api, add_client, add_member, row_counts
from tests.helpers import (
    AUDIT_FAILURES,
    NOW,
    access_events,
    audit_writes_fail,
    enrich,
    grant,
    withdraw,
)

PURPOSES = (
    "membership_service",
    "personalized_offers",
    "email_marketing",
    "customer_insight",
    "data_quality",
)


def document(fields: str = "id") -> str:
    return f"""
    query($purpose: String!, $where: AudienceFilter, $first: Int! = 100, $after: String) {{
      audience(purpose: $purpose, where: $where, first: $first, after: $after) {{
        edges {{ cursor node {{ {fields} }} }}
        pageInfo {{ hasNextPage endCursor }}
      }}
    }}
    """


@pytest.fixture
async def key(db: AsyncEngine) -> str:
    """An app client that may select audiences under every purpose."""
    client = await add_client(
        db, name="campaigns", purposes=PURPOSES, capabilities=(Capability.AUDIENCE,)
    )
    return client.key


async def ask(
    api: Api,
    key: str | None,
    purpose: str,
    *,
    fields: str = "id",
    where: dict[str, Any] | None = None,
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    variables: dict[str, Any] = {"purpose": purpose, "where": where, "after": after}
    if first is not None:
        variables["first"] = first
    response = await api.graphql(document(fields), variables, token=key)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids_of(body: dict[str, Any]) -> list[uuid.UUID]:
    return [uuid.UUID(edge["node"]["id"]) for edge in body["data"]["audience"]["edges"]]


def codes(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e.get("path", ())): e["extensions"]["code"] for e in body.get("errors", [])}


async def set_enrichment(
    engine: AsyncEngine, member_id: uuid.UUID, grant_id: uuid.UUID, **values: Any
) -> None:
    """Enriched values of the caller's choosing (tests.helpers.enrich writes fixed ones)."""
    categories = {
        "income_band": "enriched.demographics",
        "household_size": "enriched.demographics",
        "lifestyle_segment": "enriched.lifestyle",
        "interests": "enriched.lifestyle",
    }
    async with engine.begin() as connection:
        for field, value in values.items():
            await connection.execute(
                text(
                    "INSERT INTO enrichment_records (member_id, field, category, value, source, "
                    "obtained_at, purpose_key, consent_event_id) VALUES "
                    "(:m, :f, :c, CAST(:v AS jsonb), 'Broker', now(), 'personalized_offers', :g)"
                ),
                {
                    "m": member_id,
                    "f": field,
                    "c": categories[field],
                    "v": json.dumps(value),
                    "g": grant_id,
                },
            )


async def expire(engine: AsyncEngine, member_id: uuid.UUID, purpose: str) -> None:
    """The EXPIRED event the purge job appends."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO consent_events (member_id, purpose_key, kind, channel, actor_kind) "
                "VALUES (:m, :p, 'EXPIRED', 'test', 'SYSTEM')"
            ),
            {"m": member_id, "p": purpose},
        )


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql), params)


# -- Who is in the audience ------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["personalized_offers", "email_marketing"])
async def test_the_audience_is_the_members_whose_consent_holds(
    api: Api, db: AsyncEngine, key: str, purpose: str
) -> None:
    valid = await add_member(db)
    await grant(db, valid, purpose)
    withdrawn = await add_member(db)
    await grant(db, withdrawn, purpose)
    await withdraw(db, withdrawn, purpose)
    expired = await add_member(db)
    await grant(
        db,
        expired,
        purpose,
        granted_at=NOW - dt.timedelta(days=400),
        expires_at=NOW - dt.timedelta(days=35),
    )
    await expire(db, expired, purpose)
    conditional = await add_member(db)
    await grant(db, conditional, purpose, method="CONDITIONAL")
    outdated = await add_member(db)
    await grant(db, outdated, purpose, notice="2025-01")
    await add_member(db)  # never asked
    other_purpose = await add_member(db)
    await grant(db, other_purpose, "customer_insight")

    body = await ask(api, key, purpose)

    assert ids_of(body) == [valid]
    assert "errors" not in body


async def test_an_expired_consent_leaves_the_audience_at_its_expiry_with_no_job_run(
    api: Api, db: AsyncEngine, key: str
) -> None:
    lapsed = await add_member(db)
    # Granted a year ago, lapsed a second ago; no EXPIRED event has been written.
    await grant(
        db,
        lapsed,
        "personalized_offers",
        granted_at=NOW - dt.timedelta(days=365),
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
    )
    lasting = await add_member(db)
    await grant(
        db,
        lasting,
        "personalized_offers",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )
    async with db.connect() as connection:
        kinds = (await connection.execute(text("SELECT kind FROM consent_events"))).scalars()
        assert set(kinds) == {"GRANTED"}

    body = await ask(api, key, "personalized_offers")

    assert ids_of(body) == [lasting]


async def test_a_closed_membership_is_not_in_a_contract_purposes_audience(
    api: Api, db: AsyncEngine, key: str
) -> None:
    active = await add_member(db)
    await add_member(db, membership_status="CLOSED")

    body = await ask(api, key, "membership_service")

    assert ids_of(body) == [active]


async def test_an_objection_in_force_takes_a_member_out_of_a_legitimate_interest_audience(
    api: Api, db: AsyncEngine, key: str
) -> None:
    objected = await add_member(db)
    lifted = await add_member(db)
    never = await add_member(db)
    await execute(
        db,
        "INSERT INTO objections (member_id, purpose_key) VALUES (:m, 'data_quality')",
        m=objected,
    )
    await execute(
        db,
        "INSERT INTO objections (member_id, purpose_key, objected_at, lifted_at) "
        "VALUES (:m, 'data_quality', now() - interval '1 day', now())",
        m=lifted,
    )

    body = await ask(api, key, "data_quality", fields="id address { city }")

    assert ids_of(body) == sorted([lifted, never])
    [audited] = {row["legal_basis"] for row in await access_events(db)}
    assert audited == "LEGITIMATE_INTEREST"


# -- What is released, and what is audited ---------------------------------------------------------


async def test_only_what_the_purpose_releases_comes_back_and_each_member_is_one_event(
    api: Api, db: AsyncEngine, key: str
) -> None:
    members = sorted([await add_member(db, first_name="Sensitive") for _ in range(2)])
    grants = {}
    for member_id in members:
        grants[member_id] = await grant(db, member_id, "personalized_offers")
        await enrich(db, member_id, grants[member_id])

    body = await ask(
        api, key, "personalized_offers", fields="id purpose email tier incomeBand lifestyleSegment"
    )

    nodes = [edge["node"] for edge in body["data"]["audience"]["edges"]]
    assert nodes == [
        {
            "id": str(member_id),
            "purpose": "personalized_offers",
            "email": None,
            "tier": "GOLD",
            "incomeBand": "500-750k",
            "lifestyleSegment": "active_outdoor",
        }
        for member_id in members
    ]
    assert codes(body) == {
        ("audience", "edges", 0, "node", "email"): "CATEGORY_NOT_IN_PURPOSE",
        ("audience", "edges", 1, "node", "email"): "CATEGORY_NOT_IN_PURPOSE",
    }
    assert "@example.org" not in json.dumps(body)
    events = await access_events(db)
    assert [row["member_id"] for row in events] == members
    for row in events:
        assert row["operation"] == "audience"
        assert row["purpose"] == "personalized_offers"
        assert row["legal_basis"] == "CONSENT"
        assert row["outcome"] == "PARTIAL"
        assert row["fields_requested"] == ["email", "income_band", "lifestyle_segment", "tier"]
        assert row["fields_released"] == ["income_band", "lifestyle_segment", "tier"]
        assert row["fields_withheld"] == {"email": "CATEGORY_NOT_IN_PURPOSE"}
        assert row["consent_ids"] == [grants[row["member_id"]]]
    assert len({row["request_id"] for row in events}) == 1


async def test_withheld_fields_are_reported_at_each_alias_they_were_asked_under(
    api: Api, db: AsyncEngine, key: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "email_marketing")
    query = """
    { audience(purpose: "email_marketing") {
        people: edges { who: node { mail: email band: incomeBand } }
        edges { node { ... on Member { lifestyleSegment } } }
    } }
    """

    response = await api.graphql(query, token=key)

    body = response.json()
    assert body["data"]["audience"]["people"][0]["who"]["mail"].endswith("@example.org")
    assert codes(body) == {
        ("audience", "people", 0, "who", "band"): "CATEGORY_NOT_IN_PURPOSE",
        ("audience", "edges", 0, "node", "lifestyleSegment"): "CATEGORY_NOT_IN_PURPOSE",
    }
    [audited] = await access_events(db)
    assert audited["fields_requested"] == ["email", "income_band", "lifestyle_segment"]
    assert audited["fields_released"] == ["email"]
    assert audited["outcome"] == "PARTIAL"


@pytest.mark.parametrize("skip", [True, False])
async def test_a_field_left_out_by_skip_is_neither_decided_nor_audited(
    api: Api, db: AsyncEngine, key: str, skip: bool
) -> None:
    await add_member(db)
    query = """
    query($skip: Boolean!) { audience(purpose: "membership_service") {
        edges { node { tier incomeBand @skip(if: $skip) } }
    } }
    """

    # The same document twice, with the other value first: nothing cached decides for it.
    await api.graphql(query, {"skip": not skip}, token=key)
    response = await api.graphql(query, {"skip": skip}, token=key)

    body = response.json()
    [edge] = body["data"]["audience"]["edges"]
    assert edge["node"] == ({"tier": "GOLD"} if skip else {"tier": "GOLD", "incomeBand": None})
    assert [e["path"] for e in body.get("errors", [])] == (
        [] if skip else [["audience", "edges", 0, "node", "incomeBand"]]
    )
    latest = (await access_events(db))[-1]
    assert latest["fields_requested"] == (["tier"] if skip else ["income_band", "tier"])


async def test_nothing_outside_the_purpose_is_released_though_the_member_is_listed(
    api: Api, db: AsyncEngine, key: str
) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "customer_insight", method="CONDITIONAL")

    body = await ask(api, key, "customer_insight", fields="id email")

    assert body["data"]["audience"]["edges"][0]["node"] == {"id": str(member_id), "email": None}
    [audited] = await access_events(db)
    # Being on the page tells the caller the consent holds: that consent is relied on.
    assert audited["outcome"] == "PARTIAL"
    assert audited["fields_released"] == []
    assert audited["consent_ids"] == [grant_id]


async def test_address_and_consent_standing_come_as_a_members_read_gives_them(
    api: Api, db: AsyncEngine, key: str
) -> None:
    members = sorted([await add_member(db, city="Bergen") for _ in range(2)])
    await execute(
        db,
        "INSERT INTO cleansing_records (member_id, purpose_key, field, old_value, new_value, "
        "source) VALUES (:m, 'data_quality', 'city', '\"Oslo\"', '\"Bergen\"', 'Folkeregisteret')",
        m=members[0],
    )
    await grant(db, members[1], "personalized_offers", notice="2025-01")

    body = await ask(
        api,
        key,
        "membership_service",
        fields="address { city corrections { field newValue } } consents { purpose problem }",
    )

    first, second = (edge["node"] for edge in body["data"]["audience"]["edges"])
    assert first["address"] == {
        "city": "Bergen",
        "corrections": [{"field": "city", "newValue": "Bergen"}],
    }
    assert second["address"] == {"city": "Bergen", "corrections": []}
    standing = {c["purpose"]: c["problem"] for c in second["consents"]}
    assert standing == {
        "personalized_offers": "NOTICE_OUTDATED",
        "email_marketing": "CONSENT_REQUIRED",
        "customer_insight": "CONSENT_REQUIRED",
    }
    assert {c["problem"] for c in first["consents"]} == {"CONSENT_REQUIRED"}
    assert "errors" not in body
    assert [row["outcome"] for row in await access_events(db)] == ["RELEASED", "RELEASED"]


async def test_an_empty_page_writes_no_events(api: Api, db: AsyncEngine, key: str) -> None:
    await add_member(db)  # never asked for email marketing

    body = await ask(api, key, "email_marketing", fields="id email")

    assert body["data"]["audience"] == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    assert await access_events(db) == []


# -- Pages -----------------------------------------------------------------------------------------


def member_ids(*numbers: int) -> list[uuid.UUID]:
    """Ids in a known order (PostgreSQL orders uuids as their 128-bit numbers)."""
    return [uuid.UUID(int=number << 64 | 0x4000_8000_0000_0000) for number in numbers]


async def test_pages_come_in_member_id_order_with_their_cursors(
    api: Api, db: AsyncEngine, key: str
) -> None:
    ids = member_ids(1, 2, 3, 4, 5)
    for member_id in reversed(ids):
        await add_member(db, id=member_id)

    pages = []
    after = None
    while True:
        body = await ask(api, key, "membership_service", first=2, after=after)
        pages.append(body["data"]["audience"])
        info = body["data"]["audience"]["pageInfo"]
        if not info["hasNextPage"]:
            break
        after = info["endCursor"]

    assert [[uuid.UUID(e["node"]["id"]) for e in page["edges"]] for page in pages] == [
        ids[0:2],
        ids[2:4],
        ids[4:5],
    ]
    assert [page["pageInfo"]["hasNextPage"] for page in pages] == [True, True, False]
    for page in pages:
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
    assert len(await access_events(db)) == 5


async def test_members_added_or_removed_before_the_cursor_do_not_shift_the_next_page(
    api: Api, db: AsyncEngine, key: str
) -> None:
    early, second, third, fourth, fifth = member_ids(10, 20, 30, 40, 50)
    for member_id in (early, second, third, fourth, fifth):
        await add_member(db, id=member_id)
    first_page = await ask(api, key, "membership_service", first=2)
    cursor = first_page["data"]["audience"]["pageInfo"]["endCursor"]

    [newcomer] = member_ids(15)
    await add_member(db, id=newcomer)
    await execute(
        db,
        "UPDATE members SET membership_status = 'CLOSED', closed_at = now() WHERE id = :m",
        m=early,
    )
    next_page = await ask(api, key, "membership_service", first=2, after=cursor)

    assert ids_of(first_page) == [early, second]
    assert ids_of(next_page) == [third, fourth]
    assert next_page["data"]["audience"]["pageInfo"]["hasNextPage"] is True


def cursor_of(text_: str) -> str:
    return base64.urlsafe_b64encode(text_.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "",
        "%%%%",
        cursor_of("audience/1:not-a-uuid"),
        cursor_of(f"audience/2:{uuid.uuid4()}"),
        cursor_of(f"2026-01-01T00:00:00+00:00|{12}"),  # an access-log cursor
        cursor_of(f"audience/1:{{{uuid.uuid4()}}}"),  # braces: not this module's spelling
        "\u00e6" * 10,
        "A" * 10_000,
    ],
    ids=[
        "words",
        "empty",
        "not-base64",
        "not-a-uuid",
        "other-version",
        "access-log",
        "braces",
        "non-ascii",
        "long",
    ],
)
async def test_a_malformed_cursor_is_bad_user_input(
    api: Api, db: AsyncEngine, key: str, cursor: str
) -> None:
    await add_member(db, first_name="Sensitive")
    before = await row_counts(db)

    body = await ask(api, key, "membership_service", fields="id firstName", after=cursor)

    assert body["data"] == {"audience": None}
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "argument": "after"}
    assert "Sensitive" not in json.dumps(body)
    assert await row_counts(db) == before


async def test_a_cursor_from_a_valid_page_is_accepted_even_with_its_member_gone(
    api: Api, db: AsyncEngine, key: str
) -> None:
    first, second = member_ids(1, 2)
    await add_member(db, id=first)
    await add_member(db, id=second)
    cursor = (await ask(api, key, "membership_service", first=1))["data"]["audience"]["edges"][0][
        "cursor"
    ]
    await execute(
        db,
        "UPDATE members SET membership_status = 'CLOSED', closed_at = now() WHERE id = :m",
        m=first,
    )

    body = await ask(api, key, "membership_service", first=1, after=cursor)

    assert ids_of(body) == [second]


# -- Selection -------------------------------------------------------------------------------------

# (purpose, where, members: (in the audience?, member columns, enriched values))
FILTERS: dict[
    str, tuple[str, dict[str, Any], list[tuple[bool, dict[str, Any], dict[str, Any]]]]
] = {
    "tier": (
        "membership_service",
        {"tier": ["SILVER", "PLATINUM"]},
        [(True, {"tier": "SILVER"}, {}), (True, {"tier": "PLATINUM"}, {}), (False, {}, {})],
    ),
    "memberSince": (
        "membership_service",
        {"memberSinceFrom": "2020-01-01", "memberSinceTo": "2020-12-31"},
        [
            (True, {"member_since": dt.date(2020, 1, 1)}, {}),
            (True, {"member_since": dt.date(2020, 12, 31)}, {}),
            (False, {"member_since": dt.date(2019, 12, 31)}, {}),
            (False, {"member_since": dt.date(2021, 1, 1)}, {}),
        ],
    ),
    "postalCodePrefix": (
        "data_quality",
        {"postalCodePrefix": ["50", "9"]},
        [
            (True, {"postal_code": "5003"}, {}),
            (True, {"postal_code": "9008"}, {}),
            (False, {"postal_code": "0150"}, {}),
        ],
    ),
    "country": (
        "membership_service",
        {"country": ["se"]},
        [(True, {"country": "SE"}, {}), (False, {"country": "NO"}, {})],
    ),
    "incomeBand": (
        "personalized_offers",
        {"incomeBand": ["750k+"]},
        [
            (True, {}, {"income_band": "750k+"}),
            (False, {}, {"income_band": "500-750k"}),
            (False, {}, {}),
        ],
    ),
    "householdSize": (
        "personalized_offers",
        {"householdSizeMin": 3, "householdSizeMax": 4},
        [
            (True, {}, {"household_size": 3}),
            (True, {}, {"household_size": 4}),
            (False, {}, {"household_size": 2}),
            (False, {}, {"household_size": 5}),
            (False, {}, {}),
        ],
    ),
    "lifestyleSegment": (
        "personalized_offers",
        {"lifestyleSegment": ["urban"]},
        [(True, {}, {"lifestyle_segment": "urban"}), (False, {}, {"lifestyle_segment": "rural"})],
    ),
    "interests": (
        "personalized_offers",
        {"interests": ["cooking", "gardening"]},
        [
            (True, {}, {"interests": ["travel", "cooking"]}),
            (False, {}, {"interests": ["outdoor"]}),
            (False, {}, {}),
        ],
    ),
}


@pytest.mark.parametrize("name", list(FILTERS))
async def test_each_filter_selects_on_a_purpose_that_releases_it(
    api: Api, db: AsyncEngine, key: str, name: str
) -> None:
    purpose, where, members = FILTERS[name]
    selected = []
    for taken, columns, enriched in members:
        member_id = await add_member(db, **columns)
        if purpose == "personalized_offers":
            grant_id = await grant(db, member_id, purpose)
            await set_enrichment(db, member_id, grant_id, **enriched)
        if taken:
            selected.append(member_id)

    body = await ask(api, key, purpose, where=where)

    assert ids_of(body) == sorted(selected)
    assert len(await access_events(db)) == len(selected)


async def test_a_filter_on_a_field_the_purpose_withholds_is_refused_and_audited(
    api: Api, db: AsyncEngine, key: str
) -> None:
    member_id = await add_member(db)
    grant_id = await grant(db, member_id, "email_marketing")
    await set_enrichment(db, member_id, grant_id, income_band="high")

    body = await ask(
        api,
        key,
        "email_marketing",
        fields="id email",
        where={"incomeBand": ["high"], "tier": ["GOLD"]},
    )

    assert body["data"] == {"audience": None}
    [error] = body["errors"]
    assert error["extensions"] == {
        "code": "CATEGORY_NOT_IN_PURPOSE",
        "purpose": "email_marketing",
        "filters": ["incomeBand"],
    }
    assert "@example.org" not in json.dumps(body)
    [audited] = await access_events(db)
    assert audited["member_id"] is None
    assert audited["operation"] == "audience"
    assert audited["purpose"] == "email_marketing"
    assert audited["legal_basis"] == "CONSENT"
    assert audited["outcome"] == "DENIED"
    assert audited["fields_released"] == []
    assert audited["fields_withheld"] == {
        "email": "CATEGORY_NOT_IN_PURPOSE",
        "where.incomeBand": "CATEGORY_NOT_IN_PURPOSE",
    }
    assert audited["details"] == {"reason": "CATEGORY_NOT_IN_PURPOSE"}


# -- Who may ask -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "code"),
    [
        ("without-capability", "FORBIDDEN"),
        ("without-purpose", "PURPOSE_NOT_PERMITTED"),
        ("unknown-purpose", "UNKNOWN_PURPOSE"),
    ],
)
async def test_a_refused_client_is_told_why_and_audited(
    api: Api, db: AsyncEngine, key: str, caller: str, code: str
) -> None:
    member_id = await add_member(db)
    await grant(db, member_id, "email_marketing")
    purpose = "email_marketing"
    if caller == "without-capability":
        key = (await add_client(db, name="shop", purposes=PURPOSES)).key
    elif caller == "without-purpose":
        key = (
            await add_client(
                db,
                name="other",
                purposes=("membership_service",),
                capabilities=(Capability.AUDIENCE,),
            )
        ).key
    else:
        purpose = "telemarketing"

    body = await ask(api, key, purpose, fields="id email")

    assert body["data"] == {"audience": None}
    assert codes(body) == {("audience",): code}
    [audited] = await access_events(db)
    assert audited["member_id"] is None
    assert audited["operation"] == "audience"
    assert audited["purpose"] == purpose
    assert audited["outcome"] == "DENIED"
    assert audited["fields_withheld"] == {"email": code}


async def test_an_anonymous_caller_is_unauthenticated(api: Api, db: AsyncEngine) -> None:
    await add_member(db)

    response = await api.graphql(document("id email"), {"purpose": "membership_service"})

    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert not (body.get("data") or {}).get("audience")


# -- Failing closed, and bad input -----------------------------------------------------------------


@pytest.mark.parametrize("failing", list(AUDIT_FAILURES))
async def test_a_failing_audit_write_sends_no_rows(
    api: Api, db: AsyncEngine, key: str, failing: str
) -> None:
    for _ in range(3):
        await add_member(db, first_name="Sensitive")
    async with audit_writes_fail(db, failing):
        before = await row_counts(db)
        response = await api.graphql(
            document("id firstName email"), {"purpose": "membership_service"}, token=key
        )
        after = await row_counts(db)

    assert response.status_code == 503
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
    assert "Sensitive" not in response.text
    assert "@example.org" not in response.text
    assert after == before


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"first": 0}, "first"),
        ({"first": 101}, "first"),
        ({"first": -1}, "first"),
        ({"where": {"postalCodePrefix": ["0" * 65]}}, "postalCodePrefix"),
        ({"where": {"country": [""]}}, "country"),
        ({"where": {"memberSinceFrom": "2021-01-01", "memberSinceTo": "2020-01-01"}}, "where"),
        ({"where": {"householdSizeMin": -1}}, "householdSizeMin"),
    ],
    ids=[
        "first-0",
        "first-over-max",
        "first-negative",
        "value-too-long",
        "value-empty",
        "dates-reversed",
        "size-negative",
    ],
)
async def test_bad_input_is_refused_and_releases_nothing(
    api: Api, db: AsyncEngine, key: str, arguments: dict[str, Any], argument: str
) -> None:
    member_id = await add_member(db, first_name="Sensitive")
    grant_id = await grant(db, member_id, "personalized_offers")
    await enrich(db, member_id, grant_id)
    before = await row_counts(db)

    body = await ask(api, key, "personalized_offers", fields="id tier", **arguments)

    assert body["data"] == {"audience": None}
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "argument": argument}
    assert str(member_id) not in json.dumps(body)
    assert await row_counts(db) == before
