"""Access events may carry their leaf hash, computed by the gateway as it writes them.

The sealer then reads an event's id, time and hash instead of every column (reading the events
back was most of its work). The column is internal, like `txid`: the hash covers the event's
columns, not itself, and verification recomputes it from them, so an event written with a wrong
hash is named as altered. Events without one (written before this revision, or by a path that
does not compute it) are hashed by the sealer from their columns, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: a change of the catalog only, whatever the size of the log.
    op.execute(
        "ALTER TABLE access_events ADD COLUMN leaf_hash bytea, "
        "ADD CONSTRAINT ck_access_events_leaf_hash "
        "CHECK (leaf_hash IS NULL OR length(leaf_hash) = 32)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE access_events DROP COLUMN leaf_hash")
