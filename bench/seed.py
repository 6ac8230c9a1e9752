"""The benchmark's data: members with base, address and enriched values (half consenting to
personalized_offers), and a million sealed access events for the export. Idempotent."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.clients import ensure_client
from gateway.access.purposes import load_purposes, read_policy_file
from gateway.audit.sealer import seal_until_current
from gateway.domain import Capability, Role
from gateway.signing import Signer
from gateway.store import migrate


async def prepare_database(engine: AsyncEngine, *, name: str) -> tuple[str, str]:
    """Migrate, load the policy, make the gateway's restricted login (the servers run as it, as
    production does), and make (or re-key) an app client `<name>-app` that may read under the
    consent purposes and capture consent, and an auditor `<name>-auditor`; returns their keys.
    Shared by the benchmark and the load test."""
    await migrate.upgrade(engine)
    await migrate.ensure_gateway_login(engine)
    async with engine.begin() as connection:
        await load_purposes(connection, read_policy_file())
        app = await ensure_client(
            connection,
            name=f"{name}-app",
            role=Role.APP,
            purposes=["personalized_offers", "customer_insight", "membership_service"],
            capabilities=[Capability.CAPTURE_CONSENT],
        )
        auditor = await ensure_client(connection, name=f"{name}-auditor", role=Role.AUDITOR)
    return app.key, auditor.key


async def seed_members(engine: AsyncEngine, *, count: int) -> None:
    async with engine.begin() as connection:
        present = await connection.scalar(
            text("SELECT count(*) FROM members WHERE email LIKE 'bench%'")
        )
        if present >= count:
            return
        await connection.execute(
            text(
                "INSERT INTO members (first_name, last_name, email, phone, street, postal_code, "
                "city, country, tier, points, member_since) "
                "SELECT 'Bench', 'Member ' || g, "
                "'bench' || lpad(g::text, 7, '0') || '@example.org', "
                "'+4790000000', 'Storgata ' || (g % 120 + 1), '0150', 'Oslo', 'NO', "
                "(ARRAY['BASIC','SILVER','GOLD','PLATINUM'])[1 + g % 4], g % 25000, "
                "current_date - (g % 3000) "
                "FROM generate_series(CAST(:first AS int), CAST(:count AS int)) AS g"
            ),
            {"first": present + 1, "count": count},
        )
        # Every other member consents to personalized_offers and has enriched values.
        await connection.execute(
            text(
                "INSERT INTO consent_events (member_id, purpose_key, kind, method, "
                "notice_version, channel, actor_kind, expires_at) "
                "SELECT id, 'personalized_offers', 'GRANTED', 'EXPLICIT', '2026-01', 'bench', "
                "'MEMBER', now() + interval '300 days' FROM members "
                "WHERE email LIKE 'bench%' AND substr(email, 12, 1)::int % 2 = 0 "
                "AND NOT EXISTS (SELECT 1 FROM consent_events c WHERE c.member_id = members.id)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO enrichment_records (member_id, field, category, value, source, "
                "obtained_at, purpose_key, consent_event_id) "
                "SELECT c.member_id, f.field, f.category, f.value, 'Bench Broker', now(), "
                "'personalized_offers', c.id FROM consent_events c CROSS JOIN (VALUES "
                "('income_band', 'enriched.demographics', '\"500-750k\"'::jsonb), "
                "('household_size', 'enriched.demographics', '3'::jsonb), "
                "('lifestyle_segment', 'enriched.lifestyle', '\"urban_family\"'::jsonb)) "
                "AS f(field, category, value) WHERE c.channel = 'bench' "
                "ON CONFLICT (member_id, field) DO NOTHING"
            )
        )


async def seed_events(
    engine: AsyncEngine, *, count: int, signer: Signer, spacing_seconds: float = 1.0
) -> None:
    """At least `count` access events, `spacing_seconds` apart back from now, and every event
    sealed: for the export scenario, and so that no server starts behind with events an earlier
    run left unsealed. The monthly partitions the oldest of them need are made first (a million
    events reach 11.6 days back: before the month began, in its first days)."""
    async with engine.begin() as connection:
        present = await connection.scalar(text("SELECT count(*) FROM audit_seals"))
        missing = count - present
        if count > 0 and missing > 0:
            await connection.execute(
                text(
                    "SELECT tillit_ensure_audit_partitions(CAST(now() - make_interval("
                    "secs => CAST(:span AS double precision)) AS date), 2)"
                ),
                {"span": missing * spacing_seconds},
            )
            await connection.execute(
                text(
                    "INSERT INTO access_events (occurred_at, request_id, operation, actor_kind, "
                    "member_id, purpose, legal_basis, outcome, fields_requested, "
                    "fields_released, fields_withheld) "
                    "SELECT now() - make_interval(secs => g * CAST(:spacing AS double precision)), "
                    "'bench-' || g, 'member', "
                    "'SYSTEM', gen_random_uuid(), 'personalized_offers', 'CONSENT', "
                    "CASE WHEN g % 2 = 0 THEN 'RELEASED' ELSE 'DENIED' END, "
                    "ARRAY['tier','points','income_band'], "
                    "CASE WHEN g % 2 = 0 THEN ARRAY['tier','points','income_band'] "
                    "ELSE ARRAY[]::text[] END, "
                    "CASE WHEN g % 2 = 0 THEN '{}'::jsonb ELSE "
                    '\'{"tier": "CONSENT_REQUIRED"}\'::jsonb END '
                    "FROM generate_series(1, CAST(:missing AS int)) AS g"
                ),
                {"missing": missing, "spacing": spacing_seconds},
            )
    await seal_until_current(engine, signer)
