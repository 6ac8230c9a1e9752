"""Synthetic demo data: members with consents of both methods, enrichment and cleansing records.

Seeded and reproducible: the same seed gives the same members and values, with ids derived from
the seed, so loading twice adds nothing the second time. Names and addresses are made up.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.access.purposes import fetch_purposes
from gateway.domain import (
    ActorKind,
    CleansableField,
    ConsentEventKind,
    ConsentMethod,
    EnrichedField,
    Tier,
)
from gateway.store import models
from gateway.store.db import raw_of

_NAMESPACE = uuid.UUID("6f1d3b8e-6c1a-4c55-9a55-2f1f6a3e7b10")
FIRST_NAMES = [
    "Ola",
    "Kari",
    "Nora",
    "Emil",
    "Ingrid",
    "Lars",
    "Sofie",
    "Jakob",
    "Ida",
    "Henrik",
    "Maja",
    "Sander",
    "Thea",
    "Magnus",
    "Emma",
    "Johannes",
    "Sara",
    "Aksel",
    "Frida",
    "Tobias",
]
LAST_NAMES = [
    "Hansen",
    "Johansen",
    "Olsen",
    "Larsen",
    "Andersen",
    "Pedersen",
    "Nilsen",
    "Kristiansen",
    "Jensen",
    "Karlsen",
    "Berg",
    "Haugen",
    "Hagen",
    "Eriksen",
    "Bakken",
]
PLACES = [
    ("0150", "Oslo"),
    ("5003", "Bergen"),
    ("7010", "Trondheim"),
    ("4006", "Stavanger"),
    ("9008", "Tromsø"),
    ("4610", "Kristiansand"),
    ("3015", "Drammen"),
    ("1606", "Fredrikstad"),
]
STREETS = ["Storgata", "Kirkeveien", "Parkveien", "Skolegata", "Strandgata", "Torggata"]
INCOME_BANDS = ["<300k", "300-500k", "500-750k", "750k-1M", ">1M"]
SEGMENTS = [
    "urban_family",
    "active_outdoor",
    "young_urban",
    "senior_comfort",
    "budget_conscious",
    "premium_seeker",
]
INTERESTS = ["outdoor", "cooking", "fashion", "electronics", "travel", "sports", "home", "books"]
BROKER = "Demo Data Broker AS"
REGISTER = "Folkeregisteret (demo)"


def demo_id(seed: int, *parts: object) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in (seed, *parts)))


@dataclass(frozen=True)
class DemoSummary:
    members: int
    members_added: int
    consent_events: int
    enrichment_records: int
    cleansing_records: int
    first_member_id: uuid.UUID


@dataclass
class _Rows:
    members: list[dict[str, Any]]
    consents: list[dict[str, Any]]
    enrichments: list[dict[str, Any]]
    cleansings: list[dict[str, Any]]
    notices: list[dict[str, Any]]


def _build(count: int, seed: int, now: dt.datetime, lifetimes: dict[str, dt.timedelta]) -> _Rows:
    rng = random.Random(seed)
    rows = _Rows([], [], [], [], [])
    for i in range(count):
        member_id = demo_id(seed, "member", i)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        postal_code, city = rng.choice(PLACES)
        street = f"{rng.choice(STREETS)} {rng.randint(1, 120)}"
        rows.members.append(
            {
                "id": member_id,
                "first_name": first,
                "last_name": last,
                "email": f"{first}.{last}.{seed}-{i}@example.org".lower(),
                "phone": f"+47{rng.randint(40000000, 99999999)}",
                "street": street,
                "postal_code": postal_code,
                "city": city,
                "country": "NO",
                "tier": rng.choice(list(Tier)).value,
                "points": rng.randint(0, 25000),
                "member_since": (now - dt.timedelta(days=rng.randint(30, 3000))).date(),
            }
        )
        grants = {
            # Explicit consent to personalised offers for about half of the members.
            "personalized_offers": (ConsentMethod.EXPLICIT, rng.random() < 0.5),
            # Conditional consent (terms of joining) to customer insight for most.
            "customer_insight": (ConsentMethod.CONDITIONAL, rng.random() < 0.7),
        }
        valid_grants: dict[str, uuid.UUID] = {}
        for purpose_key, (method, granted) in grants.items():
            if not granted or purpose_key not in lifetimes:
                continue
            granted_at = now - dt.timedelta(days=rng.randint(1, 200), minutes=rng.randint(0, 1440))
            grant_id = demo_id(seed, "consent", i, purpose_key, "granted")
            rows.consents.append(
                {
                    "id": grant_id,
                    "member_id": member_id,
                    "purpose_key": purpose_key,
                    "kind": ConsentEventKind.GRANTED.value,
                    "method": method.value,
                    "notice_version": "2026-01",
                    "channel": "demo-signup" if method is ConsentMethod.CONDITIONAL else "demo-app",
                    "actor_kind": ActorKind.MEMBER.value,
                    "evidence": "Synthetic demo consent.",
                    "occurred_at": granted_at,
                    "expires_at": granted_at + lifetimes[purpose_key],
                }
            )
            if rng.random() < 0.1:
                rows.consents.append(
                    {
                        "id": demo_id(seed, "consent", i, purpose_key, "withdrawn"),
                        "member_id": member_id,
                        "purpose_key": purpose_key,
                        "kind": ConsentEventKind.WITHDRAWN.value,
                        "method": None,
                        "notice_version": None,
                        "channel": "demo-app",
                        "actor_kind": ActorKind.MEMBER.value,
                        "evidence": None,
                        "occurred_at": granted_at + (now - granted_at) / 2,
                        "expires_at": None,
                    }
                )
            else:
                valid_grants[purpose_key] = grant_id
        values: dict[EnrichedField, tuple[Any, str]] = {}
        if "personalized_offers" in valid_grants:
            offers = "personalized_offers"
            values[EnrichedField.LIFESTYLE_SEGMENT] = (rng.choice(SEGMENTS), offers)
            values[EnrichedField.INTERESTS] = (sorted(rng.sample(INTERESTS, 3)), offers)
        demographics = next(
            (p for p in ("personalized_offers", "customer_insight") if p in valid_grants), None
        )
        if demographics is not None:
            values[EnrichedField.INCOME_BAND] = (rng.choice(INCOME_BANDS), demographics)
            values[EnrichedField.HOUSEHOLD_SIZE] = (rng.randint(1, 6), demographics)
        for enriched, (value, purpose_key) in values.items():
            rows.enrichments.append(
                {
                    "id": demo_id(seed, "enrichment", i, enriched.value),
                    "member_id": member_id,
                    "field": enriched.value,
                    "category": enriched.category.value,
                    "value": value,
                    "source": BROKER,
                    "obtained_at": now - dt.timedelta(days=rng.randint(0, 30)),
                    "purpose_key": purpose_key,
                    "consent_event_id": valid_grants[purpose_key],
                }
            )
        if rng.random() < 0.1:
            # A move registered in the national register: the old address is corrected.
            new_postal_code, new_city = rng.choice(PLACES)
            recorded_at = now - dt.timedelta(days=rng.randint(0, 40))
            cleansing_id = demo_id(seed, "cleansing", i)
            rows.members[-1].update(postal_code=new_postal_code, city=new_city)
            rows.cleansings.append(
                {
                    "id": cleansing_id,
                    "member_id": member_id,
                    "purpose_key": "data_quality",
                    "field": CleansableField.CITY.value,
                    "old_value": city,
                    "new_value": new_city,
                    "source": REGISTER,
                    "recorded_at": recorded_at,
                }
            )
            rows.notices.append(
                {
                    "id": demo_id(seed, "notice", i),
                    "member_id": member_id,
                    "cleansing_record_id": cleansing_id,
                    "kind": "CLEANSING",
                    "created_at": recorded_at,
                    "due_at": recorded_at + dt.timedelta(days=30),
                    "delivered_at": recorded_at + dt.timedelta(days=2)
                    if rng.random() < 0.5
                    else None,
                }
            )
    return rows


async def _insert(
    connection: AsyncConnection, table: type[models.Base], rows: list[dict[str, Any]]
) -> int:
    added = 0
    for start in range(0, len(rows), 500):
        result = await connection.execute(
            insert(table).on_conflict_do_nothing().returning(table.id),  # type: ignore[attr-defined]
            rows[start : start + 500],
        )
        added += len(result.all())
    return added


async def load_demo(connection: AsyncConnection, *, count: int = 50, seed: int = 1) -> DemoSummary:
    """Insert `count` synthetic members and what belongs to them, unless present. No commit."""
    if count < 1:
        raise ValueError("count must be at least 1")
    purposes = {p.key: p for p in await fetch_purposes(await raw_of(connection))}
    lifetimes = {k: p.consent_lifetime for k, p in purposes.items() if p.consent_lifetime}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = _build(count, seed, now, lifetimes)
    added = await _insert(connection, models.Member, rows.members)
    await _insert(connection, models.ConsentEvent, rows.consents)
    await _insert(connection, models.EnrichmentRecord, rows.enrichments)
    if "data_quality" in purposes:
        await _insert(connection, models.CleansingRecord, rows.cleansings)
        await _insert(connection, models.MemberNotice, rows.notices)
    ids = [r["id"] for r in rows.members]

    async def count_of(model: Any) -> int:
        total = await connection.scalar(
            select(func.count()).select_from(model).where(model.member_id.in_(ids))
        )
        return int(total or 0)

    return DemoSummary(
        members=count,
        members_added=added,
        consent_events=await count_of(models.ConsentEvent),
        enrichment_records=await count_of(models.EnrichmentRecord),
        cleansing_records=await count_of(models.CleansingRecord),
        first_member_id=ids[0],
    )
