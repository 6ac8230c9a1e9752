"""Readiness probes: one row per gateway worker, written by GET /readyz, so that readiness says
whether a commit that writes WAL becomes durable in time (a primary whose synchronous standby is
gone accepts the write and then waits for the standby, forever).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"


def upgrade() -> None:
    op.execute(
        "CREATE TABLE readiness_probes ("
        " worker varchar(200) NOT NULL,"
        " probed_at timestamp with time zone NOT NULL,"
        " CONSTRAINT pk_readiness_probes PRIMARY KEY (worker))"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON readiness_probes TO {GATEWAY_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE readiness_probes")
