"""Initial schema: purposes, members, clients, consents, enrichment, cleansing, access events.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID = sa.UUID()
TIMESTAMPTZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
NEW_UUID = sa.text("gen_random_uuid()")

LEGAL_BASES = "('CONSENT', 'CONTRACT', 'LEGITIMATE_INTEREST', 'LEGAL_OBLIGATION')"
CONSENT_METHODS = "('EXPLICIT', 'CONDITIONAL')"
CATEGORIES = (
    "('contact', 'membership', 'address', 'status', 'enriched.demographics', 'enriched.lifestyle')"
)


def _id() -> sa.Column:
    return sa.Column("id", UUID, primary_key=True, server_default=NEW_UUID)


def _check(condition: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(condition, name=op.f(name))


def upgrade() -> None:
    # -- Purposes: the policy file, loaded into the database ------------------------------------
    op.create_table(
        "purposes",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("legal_basis", sa.String(32), nullable=False),
        sa.Column("title_nb", sa.Text, nullable=False),
        sa.Column("title_en", sa.Text, nullable=False),
        sa.Column("description_nb", sa.Text, nullable=False),
        sa.Column("description_en", sa.Text, nullable=False),
        sa.Column("required_consent_method", sa.String(16)),
        sa.Column("notice_version", sa.String(32), nullable=False),
        sa.Column("accepted_notice_versions", ARRAY(sa.Text), nullable=False),
        sa.Column("consent_lifetime", sa.Interval),
        sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_purposes")),
        _check("key ~ '^[a-z][a-z0-9_]*$'", "ck_purposes_key_format"),
        _check(f"legal_basis IN {LEGAL_BASES}", "ck_purposes_legal_basis"),
        _check(
            f"required_consent_method IS NULL OR required_consent_method IN {CONSENT_METHODS}",
            "ck_purposes_required_consent_method",
        ),
        # A consent purpose names the method it needs and how long a consent lasts; others do not.
        _check(
            "(legal_basis = 'CONSENT') = (required_consent_method IS NOT NULL)",
            "ck_purposes_method_iff_consent",
        ),
        _check(
            "(legal_basis = 'CONSENT') = (consent_lifetime IS NOT NULL)",
            "ck_purposes_lifetime_iff_consent",
        ),
        _check(
            "consent_lifetime IS NULL OR consent_lifetime > interval '0'",
            "ck_purposes_lifetime_positive",
        ),
        _check(
            "notice_version = ANY (accepted_notice_versions)", "ck_purposes_current_notice_accepted"
        ),
    )
    op.create_table(
        "purpose_categories",
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey(
                "purposes.key",
                ondelete="CASCADE",
                name=op.f("fk_purpose_categories_purpose_key_purposes"),
            ),
            nullable=False,
        ),
        sa.Column("category", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("purpose_key", "category", name=op.f("pk_purpose_categories")),
        _check(f"category IN {CATEGORIES}", "ck_purpose_categories_category"),
    )

    # -- Members: the data subjects and their base fields ------------------------------------------
    op.create_table(
        "members",
        _id(),
        # contact
        sa.Column("first_name", sa.Text, nullable=False),
        sa.Column("last_name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("phone", sa.Text),
        # address
        sa.Column("street", sa.Text),
        sa.Column("postal_code", sa.Text),
        sa.Column("city", sa.Text),
        sa.Column("country", sa.String(2)),
        # membership
        sa.Column("tier", sa.String(16), nullable=False, server_default="BASIC"),
        sa.Column("points", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("member_since", sa.Date, nullable=False, server_default=sa.text("CURRENT_DATE")),
        sa.Column("membership_status", sa.String(16), nullable=False, server_default="ACTIVE"),
        # status
        sa.Column("deceased", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_members")),
        _check("tier IN ('BASIC', 'SILVER', 'GOLD', 'PLATINUM')", "ck_members_tier"),
        _check("membership_status IN ('ACTIVE', 'CLOSED')", "ck_members_membership_status"),
        _check("points >= 0", "ck_members_points_not_negative"),
        _check("email LIKE '%_@_%'", "ck_members_email_shape"),
        _check("country IS NULL OR country ~ '^[A-Z]{2}$'", "ck_members_country_iso"),
    )
    op.create_index(
        "uq_members_email_lower", "members", [sa.literal_column("lower(email)")], unique=True
    )

    # -- Clients: API callers with a hashed key, a role and the purposes they may use -------------
    op.create_table(
        "clients",
        _id(),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column(
            "capabilities", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")
        ),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("disabled_at", TIMESTAMPTZ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
        sa.UniqueConstraint("name", name=op.f("uq_clients_name")),
        sa.UniqueConstraint("key_id", name=op.f("uq_clients_key_id")),
        _check("role IN ('app', 'auditor', 'admin')", "ck_clients_role"),
        _check(
            "capabilities <@ ARRAY['capture_consent', 'enrich', 'cleanse']::text[]",
            "ck_clients_capabilities",
        ),
        _check("length(key_hash) = 64", "ck_clients_key_hash_sha256"),
        _check("length(btrim(name)) > 0", "ck_clients_name_not_blank"),
    )
    op.create_table(
        "client_purposes",
        sa.Column(
            "client_id",
            UUID,
            sa.ForeignKey(
                "clients.id", ondelete="CASCADE", name=op.f("fk_client_purposes_client_id_clients")
            ),
            nullable=False,
        ),
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey("purposes.key", name=op.f("fk_client_purposes_purpose_key_purposes")),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("client_id", "purpose_key", name=op.f("pk_client_purposes")),
    )

    # -- Consent: an append-only history per (member, purpose); the newest event is the state -----
    op.create_table(
        "consent_events",
        _id(),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column(
            "member_id",
            UUID,
            sa.ForeignKey("members.id", name=op.f("fk_consent_events_member_id_members")),
            nullable=False,
        ),
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey("purposes.key", name=op.f("fk_consent_events_purpose_key_purposes")),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16)),
        sa.Column("notice_version", sa.String(32)),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column(
            "captured_by_client_id",
            UUID,
            sa.ForeignKey(
                "clients.id", name=op.f("fk_consent_events_captured_by_client_id_clients")
            ),
        ),
        sa.Column("evidence", sa.Text),
        sa.Column("evidence_sha256", sa.String(64)),
        sa.Column("occurred_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("expires_at", TIMESTAMPTZ),
        sa.Column("idempotency_key", sa.String(128)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
        sa.UniqueConstraint("seq", name=op.f("uq_consent_events_seq")),
        sa.UniqueConstraint(
            "member_id",
            "purpose_key",
            "idempotency_key",
            name=op.f("uq_consent_events_member_id_purpose_key_idempotency_key"),
        ),
        _check("kind IN ('GRANTED', 'WITHDRAWN', 'EXPIRED')", "ck_consent_events_kind"),
        _check(f"method IS NULL OR method IN {CONSENT_METHODS}", "ck_consent_events_method"),
        _check("actor_kind IN ('CLIENT', 'MEMBER', 'SYSTEM')", "ck_consent_events_actor_kind"),
        # A grant says how, on which notice, and until when; withdrawals and expiries do not.
        _check(
            "(kind = 'GRANTED') = (method IS NOT NULL AND notice_version IS NOT NULL "
            "AND expires_at IS NOT NULL)",
            "ck_consent_events_grant_is_complete",
        ),
        _check("expires_at IS NULL OR expires_at > occurred_at", "ck_consent_events_expires_after"),
        _check(
            "(actor_kind = 'CLIENT') = (captured_by_client_id IS NOT NULL)",
            "ck_consent_events_client_actor",
        ),
        _check("length(btrim(channel)) > 0", "ck_consent_events_channel_not_blank"),
    )
    op.create_index(
        "ix_consent_events_member_purpose_seq",
        "consent_events",
        ["member_id", "purpose_key", "seq"],
    )
    op.create_index(
        "ix_consent_events_expires_at",
        "consent_events",
        ["expires_at"],
        postgresql_where=sa.text("kind = 'GRANTED'"),
    )

    # -- Enrichment: third-party values, each resting on a consent ---------------------------------
    op.create_table(
        "enrichment_records",
        _id(),
        sa.Column(
            "member_id",
            UUID,
            sa.ForeignKey("members.id", name=op.f("fk_enrichment_records_member_id_members")),
            nullable=False,
        ),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("value", JSONB, nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("obtained_at", TIMESTAMPTZ, nullable=False),
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey("purposes.key", name=op.f("fk_enrichment_records_purpose_key_purposes")),
            nullable=False,
        ),
        sa.Column(
            "consent_event_id",
            UUID,
            sa.ForeignKey(
                "consent_events.id",
                name=op.f("fk_enrichment_records_consent_event_id_consent_events"),
            ),
            nullable=False,
        ),
        sa.Column(
            "recorded_by_client_id",
            UUID,
            sa.ForeignKey(
                "clients.id", name=op.f("fk_enrichment_records_recorded_by_client_id_clients")
            ),
        ),
        sa.Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrichment_records")),
        sa.UniqueConstraint(
            "member_id", "field", name=op.f("uq_enrichment_records_member_id_field")
        ),
        _check(
            "field IN ('income_band', 'household_size', 'lifestyle_segment', 'interests')",
            "ck_enrichment_records_field",
        ),
        _check(
            "category IN ('enriched.demographics', 'enriched.lifestyle')",
            "ck_enrichment_records_category",
        ),
        _check("length(btrim(source)) > 0", "ck_enrichment_records_source_not_blank"),
    )

    # -- Cleansing: register corrections under legitimate interest, and the notices they owe -------
    op.create_table(
        "cleansing_records",
        _id(),
        sa.Column(
            "member_id",
            UUID,
            sa.ForeignKey("members.id", name=op.f("fk_cleansing_records_member_id_members")),
            nullable=False,
        ),
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey("purposes.key", name=op.f("fk_cleansing_records_purpose_key_purposes")),
            nullable=False,
        ),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("old_value", JSONB, nullable=False),
        sa.Column("new_value", JSONB, nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column(
            "recorded_by_client_id",
            UUID,
            sa.ForeignKey(
                "clients.id", name=op.f("fk_cleansing_records_recorded_by_client_id_clients")
            ),
        ),
        sa.Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cleansing_records")),
        _check(
            "field IN ('street', 'postal_code', 'city', 'country', 'deceased')",
            "ck_cleansing_records_field",
        ),
        _check("length(btrim(source)) > 0", "ck_cleansing_records_source_not_blank"),
    )
    op.create_index("ix_cleansing_records_member_id", "cleansing_records", ["member_id"])
    op.create_table(
        "member_notices",
        _id(),
        sa.Column(
            "member_id",
            UUID,
            sa.ForeignKey("members.id", name=op.f("fk_member_notices_member_id_members")),
            nullable=False,
        ),
        sa.Column(
            "cleansing_record_id",
            UUID,
            sa.ForeignKey(
                "cleansing_records.id",
                name=op.f("fk_member_notices_cleansing_record_id_cleansing_records"),
            ),
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("due_at", TIMESTAMPTZ, nullable=False),
        sa.Column("delivered_at", TIMESTAMPTZ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_notices")),
        sa.UniqueConstraint(
            "cleansing_record_id", name=op.f("uq_member_notices_cleansing_record_id")
        ),
        _check("kind IN ('CLEANSING')", "ck_member_notices_kind"),
        _check(
            "(kind = 'CLEANSING') = (cleansing_record_id IS NOT NULL)",
            "ck_member_notices_cleansing_has_record",
        ),
        _check("due_at >= created_at", "ck_member_notices_due_after_created"),
    )
    op.create_index(
        "ix_member_notices_undelivered_due",
        "member_notices",
        ["due_at"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )

    # -- Objections (GDPR Art. 21) to legitimate-interest purposes -------------------------------
    op.create_table(
        "objections",
        _id(),
        sa.Column(
            "member_id",
            UUID,
            sa.ForeignKey("members.id", name=op.f("fk_objections_member_id_members")),
            nullable=False,
        ),
        sa.Column(
            "purpose_key",
            sa.String(64),
            sa.ForeignKey("purposes.key", name=op.f("fk_objections_purpose_key_purposes")),
            nullable=False,
        ),
        sa.Column("reason", sa.Text),
        sa.Column("objected_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("lifted_at", TIMESTAMPTZ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_objections")),
        _check("lifted_at IS NULL OR lifted_at >= objected_at", "ck_objections_lifted_after"),
    )
    # At most one objection in force per member and purpose.
    op.create_index(
        "uq_objections_in_force",
        "objections",
        ["member_id", "purpose_key"],
        unique=True,
        postgresql_where=sa.text("lifted_at IS NULL"),
    )

    # -- Access events: one row per member touched by an operation -------------------------------
    op.create_table(
        "access_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("occurred_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("operation", sa.String(100), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column(
            "client_id",
            UUID,
            sa.ForeignKey("clients.id", name=op.f("fk_access_events_client_id_clients")),
        ),
        # No foreign keys to members: the log outlives a member's row and records unknown ids.
        sa.Column("actor_member_id", UUID),
        sa.Column("member_id", UUID),
        # Free text: attempts under unknown purposes are recorded as they were declared.
        sa.Column("purpose", sa.String(64)),
        sa.Column("legal_basis", sa.String(32)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("fields_requested", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("fields_released", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("fields_withheld", JSONB, nullable=False, server_default="{}"),
        sa.Column("consent_ids", ARRAY(sa.UUID()), nullable=False, server_default="{}"),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_events")),
        _check(
            "actor_kind IN ('CLIENT', 'MEMBER', 'SYSTEM', 'ANONYMOUS')",
            "ck_access_events_actor_kind",
        ),
        _check(
            "outcome IN ('RELEASED', 'PARTIAL', 'DENIED', 'NOT_FOUND', 'WRITTEN', 'UNCHANGED')",
            "ck_access_events_outcome",
        ),
        _check(
            f"legal_basis IS NULL OR legal_basis IN {LEGAL_BASES}", "ck_access_events_legal_basis"
        ),
        _check(
            "(actor_kind = 'CLIENT') = (client_id IS NOT NULL)", "ck_access_events_client_actor"
        ),
        _check(
            "(actor_kind = 'MEMBER') = (actor_member_id IS NOT NULL)",
            "ck_access_events_member_actor",
        ),
        _check("jsonb_typeof(fields_withheld) = 'object'", "ck_access_events_withheld_is_object"),
    )
    op.create_index("ix_access_events_occurred", "access_events", ["occurred_at"])
    op.create_index(
        "ix_access_events_member_occurred", "access_events", ["member_id", "occurred_at"]
    )
    op.create_index(
        "ix_access_events_client_occurred", "access_events", ["client_id", "occurred_at"]
    )


def downgrade() -> None:
    # Children before parents; indexes go with their tables.
    for table in (
        "access_events",
        "objections",
        "member_notices",
        "cleansing_records",
        "enrichment_records",
        "consent_events",
        "client_purposes",
        "clients",
        "members",
        "purpose_categories",
        "purposes",
    ):
        op.drop_table(table)
