"""The consent's state, defined once: the newest event of each (member, purpose).

Every reader of "where does this member stand with this purpose" reads this view (the profile
reads, the consent changes, the renewal and purge jobs), so the rule (newest by `seq`, the order
of commits under the consent lock) has one definition. A filter on `member_id` and `purpose_key`,
the DISTINCT ON keys, is pushed into the view by the planner and served by
ix_consent_events_member_purpose_seq; a filter on any other column (kind, expires_at) applies to
the newest event, as it must.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"


def upgrade() -> None:
    op.execute(
        "CREATE VIEW consent_states AS "
        "SELECT DISTINCT ON (member_id, purpose_key) * FROM consent_events "
        "ORDER BY member_id, purpose_key, seq DESC"
    )
    op.execute(f"GRANT SELECT ON consent_states TO {GATEWAY_ROLE}")


def downgrade() -> None:
    op.execute("DROP VIEW consent_states")
