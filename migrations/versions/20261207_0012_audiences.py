"""Audiences: what changed since an export (member_changes), the exports themselves, and the
`audience` capability.

- member_changes: one row per member touched by a transaction (its txid), written by statement
  triggers on every table a member's audience standing or exported values depend on: members,
  consent_events, objections, enrichment_records. A sync (`since=`) reads the members changed by
  transactions its earlier export's snapshot did not see; with the snapshot in place of a time,
  a change committed late (begun before the export, committed after) is not lost. Statement
  triggers with transition tables: an import of a million members is one INSERT ... SELECT here.
- audience_exports: each export's purpose, filter, snapshot and start (the next sync's cursor),
  and, once it has finished, its signed manifest.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"
TIMESTAMPTZ = TIMESTAMP(timezone=True)
CAPABILITIES = (
    "ARRAY['capture_consent', 'enrich', 'cleanse', 'enroll', 'update_profile', "
    "'close_membership', 'audience']::text[]"
)
OLD_CAPABILITIES = (
    "ARRAY['capture_consent', 'enrich', 'cleanse', 'enroll', 'update_profile', "
    "'close_membership']::text[]"
)

# (table, event, transition table, member column)
_TRACKED = (
    ("members", "INSERT", "NEW", "id"),
    ("members", "UPDATE", "NEW", "id"),
    ("members", "DELETE", "OLD", "id"),
    ("consent_events", "INSERT", "NEW", "member_id"),
    ("objections", "INSERT", "NEW", "member_id"),
    ("objections", "UPDATE", "NEW", "member_id"),
    ("enrichment_records", "INSERT", "NEW", "member_id"),
    ("enrichment_records", "UPDATE", "NEW", "member_id"),
    ("enrichment_records", "DELETE", "OLD", "member_id"),
)


def _trigger(table: str, event: str) -> str:
    return f"{table}_{event.lower()}_changes"


def upgrade() -> None:
    op.execute(
        "CREATE TABLE member_changes (member_id uuid NOT NULL, "
        "txid xid8 NOT NULL DEFAULT pg_current_xact_id())"
    )
    op.create_index("ix_member_changes_txid", "member_changes", ["txid"])
    for table, event, transition, column in _TRACKED:
        function = f"tillit_{table}_{transition.lower()}_changed"
        op.execute(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = public AS $$ BEGIN "
            f"INSERT INTO member_changes (member_id) SELECT DISTINCT {column} "
            f"FROM changed_rows WHERE {column} IS NOT NULL; RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {_trigger(table, event)} AFTER {event} ON {table} "
            f"REFERENCING {transition} TABLE AS changed_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )

    op.create_table(
        "audience_exports",
        sa.Column("id", UUID(as_uuid=True), server_default=sa.text("gen_random_uuid()")),
        sa.Column("client_id", UUID(as_uuid=True), sa.ForeignKey("clients.id")),
        sa.Column("purpose_key", sa.String(64), sa.ForeignKey("purposes.key"), nullable=False),
        sa.Column("filter", JSONB, nullable=False, server_default="{}"),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("since_export_id", UUID(as_uuid=True), sa.ForeignKey("audience_exports.id")),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("started_at", TIMESTAMPTZ, nullable=False),
        sa.Column("finished_at", TIMESTAMPTZ),
        sa.Column("manifest", JSONB),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_exports")),
        sa.CheckConstraint("format IN ('csv', 'jsonl')", name=op.f("ck_audience_exports_format")),
        sa.CheckConstraint(
            "(finished_at IS NULL) = (manifest IS NULL)", name=op.f("ck_audience_exports_finished")
        ),
    )
    op.create_index(
        "ix_audience_exports_client_started", "audience_exports", ["client_id", "started_at"]
    )

    op.execute("ALTER TABLE clients DROP CONSTRAINT ck_clients_capabilities")
    op.create_check_constraint(
        op.f("ck_clients_capabilities"), "clients", f"capabilities <@ {CAPABILITIES}"
    )
    # DELETE: `tillit audience prune` forgets changes no sync can ask for (bookkeeping, not
    # evidence; the triggers alone write them).
    op.execute(f"GRANT SELECT, DELETE ON member_changes TO {GATEWAY_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON audience_exports TO {GATEWAY_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON audience_exports, member_changes FROM {GATEWAY_ROLE}")
    op.execute("ALTER TABLE clients DROP CONSTRAINT ck_clients_capabilities")
    op.execute(
        "UPDATE clients SET capabilities = array_remove(capabilities, 'audience') "
        "WHERE 'audience' = ANY(capabilities)"
    )
    op.create_check_constraint(
        op.f("ck_clients_capabilities"), "clients", f"capabilities <@ {OLD_CAPABILITIES}"
    )
    op.drop_table("audience_exports")
    for table, event, _, _ in _TRACKED:
        op.execute(f"DROP TRIGGER {_trigger(table, event)} ON {table}")
    for function in sorted({f"tillit_{t}_{tr.lower()}_changed" for t, _, tr, _ in _TRACKED}):
        op.execute(f"DROP FUNCTION {function}()")
    op.drop_table("member_changes")
