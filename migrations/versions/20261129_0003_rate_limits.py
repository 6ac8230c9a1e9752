"""Rate limits: one UNLOGGED row per client (or member, or anonymous address) with its GCRA state,
shared by every gateway worker and host.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"


def upgrade() -> None:
    op.execute(
        "CREATE UNLOGGED TABLE rate_limits ("
        " subject varchar(80) NOT NULL,"
        " tat timestamp with time zone NOT NULL,"
        " CONSTRAINT pk_rate_limits PRIMARY KEY (subject))"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits TO {GATEWAY_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE rate_limits")
