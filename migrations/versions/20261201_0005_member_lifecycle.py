"""A member's whole life: joining, changing, leaving, being forgotten; client key rotation.

- purposes: the sign-up wording of a consent purpose, and whether it may be tied to joining;
- members: the terms version accepted, the identity provider's subject, when it was closed,
  the app that enrolled it and its idempotency key;
  the gateway role may now insert (enrolment) and delete (erasure) members;
- profile_changes: the history of corrections (Art. 16), old and new value, by whom;
- erasures: that a member was erased, and until when their consent evidence is kept;
- consent_events: no foreign key to members any more (the evidence outlives the erased row), a
  trigger instead refuses events for a member that does not exist;
- clients: three new capabilities, and the previous key of a rotation with its overlap.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"
TIMESTAMPTZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
OLD_CAPABILITIES = "ARRAY['capture_consent', 'enrich', 'cleanse']::text[]"
NEW_CAPABILITIES = (
    "ARRAY['capture_consent', 'enrich', 'cleanse', 'enroll', 'update_profile', "
    "'close_membership']::text[]"
)
PROFILE_FIELDS = (
    "('first_name', 'last_name', 'email', 'phone', 'street', 'postal_code', 'city', 'country')"
)

_MEMBER_EXISTS = """
CREATE FUNCTION tillit_consent_member_exists() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM members WHERE id = NEW.member_id) THEN
        RAISE EXCEPTION 'consent event for a member that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.add_column("purposes", sa.Column("sign_up_nb", sa.Text))
    op.add_column("purposes", sa.Column("sign_up_en", sa.Text))
    op.add_column(
        "purposes",
        sa.Column("sign_up_conditional", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_check_constraint(
        op.f("ck_purposes_sign_up"),
        "purposes",
        "(sign_up_nb IS NULL) = (sign_up_en IS NULL) "
        "AND (sign_up_nb IS NULL OR legal_basis = 'CONSENT') "
        "AND (NOT sign_up_conditional OR (sign_up_nb IS NOT NULL "
        "AND required_consent_method = 'CONDITIONAL'))",
    )

    op.add_column("members", sa.Column("terms_version", sa.String(32)))
    op.add_column("members", sa.Column("external_subject", sa.String(255)))
    op.add_column("members", sa.Column("closed_at", TIMESTAMPTZ))
    op.add_column("members", sa.Column("enrolled_by_client_id", sa.UUID()))
    op.add_column("members", sa.Column("enrollment_key", sa.String(128)))
    op.create_foreign_key(
        op.f("fk_members_enrolled_by_client_id_clients"),
        "members",
        "clients",
        ["enrolled_by_client_id"],
        ["id"],
    )
    op.create_unique_constraint(
        op.f("uq_members_enrolled_by_client_id_enrollment_key"),
        "members",
        ["enrolled_by_client_id", "enrollment_key"],
    )
    op.create_check_constraint(
        op.f("ck_members_key_has_client"),
        "members",
        "enrollment_key IS NULL OR enrolled_by_client_id IS NOT NULL",
    )
    op.execute("UPDATE members SET closed_at = updated_at WHERE membership_status = 'CLOSED'")
    op.create_unique_constraint(
        op.f("uq_members_external_subject"), "members", ["external_subject"]
    )
    op.create_check_constraint(
        op.f("ck_members_closed_when_closed"),
        "members",
        "(membership_status = 'CLOSED') = (closed_at IS NOT NULL)",
    )

    op.create_table(
        "profile_changes",
        sa.Column("id", sa.UUID(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column("field", sa.String(32), nullable=False),
        sa.Column("old_value", sa.Text),
        sa.Column("new_value", sa.Text),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("client_id", sa.UUID()),
        sa.Column("purpose_key", sa.String(64)),
        sa.Column("changed_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_changes")),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["members.id"],
            name=op.f("fk_profile_changes_member_id_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_profile_changes_client_id_clients")
        ),
        sa.ForeignKeyConstraint(
            ["purpose_key"], ["purposes.key"], name=op.f("fk_profile_changes_purpose_key_purposes")
        ),
        sa.CheckConstraint(f"field IN {PROFILE_FIELDS}", name=op.f("ck_profile_changes_field")),
        sa.CheckConstraint(
            "actor_kind IN ('CLIENT', 'MEMBER')", name=op.f("ck_profile_changes_actor_kind")
        ),
        sa.CheckConstraint(
            "(actor_kind = 'CLIENT') = (client_id IS NOT NULL)",
            name=op.f("ck_profile_changes_client_actor"),
        ),
    )
    op.create_index(
        op.f("ix_profile_changes_member_id_changed_at"),
        "profile_changes",
        ["member_id", "changed_at"],
    )

    op.create_table(
        "erasures",
        sa.Column("member_id", sa.UUID(), nullable=False),
        sa.Column(
            "receipt_id", sa.UUID(), nullable=False, server_default=sa.text("gen_random_uuid()")
        ),
        sa.Column("erased_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
        sa.Column("requested_by", sa.String(16), nullable=False),
        sa.Column("evidence_kept_until", TIMESTAMPTZ, nullable=False),
        sa.Column("evidence_purged_at", TIMESTAMPTZ),
        sa.Column("deleted", JSONB, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_erasures")),
        sa.UniqueConstraint("receipt_id", name=op.f("uq_erasures_receipt_id")),
        sa.CheckConstraint(
            "requested_by IN ('MEMBER', 'SYSTEM')", name=op.f("ck_erasures_requested_by")
        ),
        sa.CheckConstraint(
            "evidence_kept_until >= erased_at", name=op.f("ck_erasures_kept_after_erasure")
        ),
    )

    op.execute("ALTER TABLE consent_events DROP CONSTRAINT fk_consent_events_member_id_members")
    op.execute(_MEMBER_EXISTS)
    op.execute(
        "CREATE TRIGGER consent_events_member_exists BEFORE INSERT ON consent_events "
        "FOR EACH ROW EXECUTE FUNCTION tillit_consent_member_exists()"
    )

    op.execute("ALTER TABLE clients DROP CONSTRAINT ck_clients_capabilities")
    op.create_check_constraint(
        op.f("ck_clients_capabilities"), "clients", f"capabilities <@ {NEW_CAPABILITIES}"
    )
    op.add_column("clients", sa.Column("previous_key_id", sa.String(32)))
    op.add_column("clients", sa.Column("previous_key_hash", sa.String(64)))
    op.add_column("clients", sa.Column("previous_key_expires_at", TIMESTAMPTZ))
    op.create_unique_constraint(op.f("uq_clients_previous_key_id"), "clients", ["previous_key_id"])
    op.create_check_constraint(
        op.f("ck_clients_previous_key_complete"),
        "clients",
        "(previous_key_id IS NULL) = (previous_key_hash IS NULL) "
        "AND (previous_key_id IS NULL) = (previous_key_expires_at IS NULL)",
    )

    role = GATEWAY_ROLE
    op.execute(f"GRANT INSERT, DELETE ON members TO {role}")
    op.execute(f"GRANT DELETE ON cleansing_records, member_notices, objections TO {role}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON profile_changes TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON erasures TO {role}")


def downgrade() -> None:
    role = GATEWAY_ROLE
    op.execute(f"REVOKE ALL ON erasures, profile_changes FROM {role}")
    op.execute(f"REVOKE DELETE ON cleansing_records, member_notices, objections FROM {role}")
    op.execute(f"REVOKE INSERT, DELETE ON members FROM {role}")
    op.execute("ALTER TABLE clients DROP CONSTRAINT ck_clients_previous_key_complete")
    op.execute("ALTER TABLE clients DROP CONSTRAINT uq_clients_previous_key_id")
    for column in ("previous_key_expires_at", "previous_key_hash", "previous_key_id"):
        op.drop_column("clients", column)
    op.execute("ALTER TABLE clients DROP CONSTRAINT ck_clients_capabilities")
    op.execute(
        "UPDATE clients SET capabilities = ARRAY(SELECT unnest(capabilities) "
        "INTERSECT SELECT unnest(" + OLD_CAPABILITIES + "))"
    )
    op.create_check_constraint(
        op.f("ck_clients_capabilities"), "clients", f"capabilities <@ {OLD_CAPABILITIES}"
    )
    op.execute("DROP TRIGGER consent_events_member_exists ON consent_events")
    op.execute("DROP FUNCTION tillit_consent_member_exists()")
    # Evidence of erased members has no member row to point at: it goes with the downgrade.
    op.execute(
        "DELETE FROM consent_events e WHERE NOT EXISTS (SELECT FROM members m WHERE m.id = e.member_id)"
    )
    op.create_foreign_key(
        op.f("fk_consent_events_member_id_members"),
        "consent_events",
        "members",
        ["member_id"],
        ["id"],
    )
    op.drop_table("erasures")
    op.drop_index(op.f("ix_profile_changes_member_id_changed_at"), table_name="profile_changes")
    op.drop_table("profile_changes")
    op.execute("ALTER TABLE members DROP CONSTRAINT ck_members_key_has_client")
    op.execute(
        "ALTER TABLE members DROP CONSTRAINT uq_members_enrolled_by_client_id_enrollment_key"
    )
    op.execute("ALTER TABLE members DROP CONSTRAINT fk_members_enrolled_by_client_id_clients")
    op.execute("ALTER TABLE members DROP CONSTRAINT ck_members_closed_when_closed")
    op.execute("ALTER TABLE members DROP CONSTRAINT uq_members_external_subject")
    for column in (
        "enrollment_key",
        "enrolled_by_client_id",
        "closed_at",
        "external_subject",
        "terms_version",
    ):
        op.drop_column("members", column)
    op.execute("ALTER TABLE purposes DROP CONSTRAINT ck_purposes_sign_up")
    for column in ("sign_up_conditional", "sign_up_en", "sign_up_nb"):
        op.drop_column("purposes", column)
