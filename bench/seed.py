"""The benchmark's data: members with base, address and enriched values (half consenting to
personalized_offers), and a million sealed access events for the export; and, in a database of its
own, S5's audience: a million members, half of them consenting to email_marketing. Idempotent."""

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


AUDIENCE_PURPOSE = "email_marketing"


async def prepare_audience_database(engine: AsyncEngine, *, name: str) -> str:
    """S5's database (bench.audience): migrated, with the policy and the gateway's login, and an
    app client `<name>-audience` that may export audiences under email_marketing; its key."""
    await migrate.upgrade(engine)
    await migrate.ensure_gateway_login(engine)
    async with engine.begin() as connection:
        await load_purposes(connection, read_policy_file())
        client = await ensure_client(
            connection,
            name=f"{name}-audience",
            role=Role.APP,
            purposes=[AUDIENCE_PURPOSE],
            capabilities=[Capability.AUDIENCE],
        )
    return client.key


# Where each member stands with email_marketing, by its number g (1..count) modulo 100: the
# newest event by seq is the state (the view consent_states), so the history matters, not only
# the last kind written. 50 in 100 hold: 46 granted once, 4 granted, withdrawn and granted again.
# The other 50: withdrawn after a grant (4), a grant past its expiry (4), expired by the expiry
# job after a grant (2), a CONDITIONAL grant (2: email_marketing asks EXPLICIT), a grant on an
# older notice (2: 2025-01), a consent to another purpose only (16: personalized_offers), no
# consent event at all (20).
_AUDIENCE_GRANTS = """
INSERT INTO consent_events (member_id, purpose_key, kind, method, notice_version, channel,
    actor_kind, occurred_at, expires_at)
SELECT id, CASE WHEN r BETWEEN 64 AND 79 THEN 'personalized_offers' ELSE 'email_marketing' END,
    'GRANTED', CASE WHEN r BETWEEN 60 AND 61 THEN 'CONDITIONAL' ELSE 'EXPLICIT' END,
    CASE WHEN r BETWEEN 62 AND 63 THEN '2025-01' ELSE '2026-01' END, 'bench-audience', 'MEMBER',
    CASE WHEN r BETWEEN 54 AND 57 THEN now() - interval '800 days'
         WHEN r BETWEEN 46 AND 53 THEN now() - interval '30 days' ELSE now() END,
    CASE WHEN r BETWEEN 54 AND 57 THEN now() - interval '70 days'
         ELSE now() + interval '365 days' END
FROM (SELECT id, substr(email, 9, 7)::int % 100 AS r FROM members
      WHERE email LIKE 'audience%') AS m
WHERE r < 80
"""
_AUDIENCE_SECOND = """
INSERT INTO consent_events (member_id, purpose_key, kind, channel, actor_kind, occurred_at)
SELECT id, 'email_marketing', CASE WHEN r < 54 THEN 'WITHDRAWN' ELSE 'EXPIRED' END,
    'bench-audience', CASE WHEN r < 54 THEN 'MEMBER' ELSE 'SYSTEM' END,
    now() - interval '10 days'
FROM (SELECT id, substr(email, 9, 7)::int % 100 AS r FROM members
      WHERE email LIKE 'audience%') AS m
WHERE r BETWEEN 46 AND 53 OR r BETWEEN 58 AND 59
"""
_AUDIENCE_REGRANT = """
INSERT INTO consent_events (member_id, purpose_key, kind, method, notice_version, channel,
    actor_kind, expires_at)
SELECT id, 'email_marketing', 'GRANTED', 'EXPLICIT', '2026-01', 'bench-audience', 'MEMBER',
    now() + interval '365 days'
FROM (SELECT id, substr(email, 9, 7)::int % 100 AS r FROM members
      WHERE email LIKE 'audience%') AS m
WHERE r BETWEEN 46 AND 49
"""


async def seed_audience(engine: AsyncEngine, *, count: int) -> bool:
    """`count` members `audience0000001@example.org` ... and their consent histories
    (_AUDIENCE_GRANTS), in one transaction of set-based statements; nothing when they are there
    already. Then VACUUM ANALYZE, so plans and the visibility map are a settled database's.
    Returns whether it seeded."""
    async with engine.begin() as connection:
        present = await connection.scalar(
            text("SELECT count(*) FROM members WHERE email LIKE 'audience%'")
        )
        if present >= count:
            return False
        if present:
            raise RuntimeError(
                f"the audience database holds {present} of {count} members: drop it to reseed"
            )
        await connection.execute(
            text(
                "INSERT INTO members (first_name, last_name, email, phone, street, postal_code, "
                "city, country, tier, points, member_since) "
                "SELECT 'Audience', 'Member ' || g, "
                "'audience' || lpad(g::text, 7, '0') || '@example.org', "
                "'+47' || (40000000 + g)::text, 'Storgata ' || (g % 120 + 1), "
                "lpad((g % 9000 + 1000)::text, 4, '0'), 'Oslo', 'NO', "
                "(ARRAY['BASIC','SILVER','GOLD','PLATINUM'])[1 + g % 4], g % 25000, "
                "current_date - (g % 3000) "
                "FROM generate_series(1, CAST(:count AS int)) AS g"
            ),
            {"count": count},
        )
        for statement in (_AUDIENCE_GRANTS, _AUDIENCE_SECOND, _AUDIENCE_REGRANT):
            await connection.execute(text(statement))
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("members", "consent_events", "member_changes"):
            await autocommit.execute(text(f"VACUUM ANALYZE {table}"))
    return True
