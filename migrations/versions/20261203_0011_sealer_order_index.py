"""The sealer's order, (txid, id), is an index of its own.

The sealer takes the final events in (txid, id) order, at most a batch (10,000) at a time. With
the index on `txid` alone PostgreSQL had to read every unsealed event and sort them to find a
batch's first 10,000: when the sealer was more than a batch behind (a 10-second interval under
a 100-member read load is some 120,000 events), every batch read and sorted the whole backlog
again. Measured on the benchmark's database: one batch 80 ms against 11 ms (77,800 events
unsealed, EXPLAIN ANALYZE), and the sealer's PostgreSQL CPU under S2 2.1 against 0.7 ms a
100-member read. Both indexes grow at their right edge; the workers' PostgreSQL CPU under S2 did
not move measurably with the wider one (5.7-6.2 against 5.2-6.3 ms a request, this machine's
noise).

Building it locks the log against writes while it runs: about 4 s a million events here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_access_events_txid_id ON access_events (txid, id)")
    op.execute("DROP INDEX ix_access_events_txid")


def downgrade() -> None:
    op.execute("CREATE INDEX ix_access_events_txid ON access_events (txid)")
    op.execute("DROP INDEX ix_access_events_txid_id")
