"""The log's one Merkle tree and what makes it checkable from outside: tiles of the tree's hashes,
each checkpoint's tree root and C2SP signed note, the log's keys, and witnesses' cosignatures.

Checkpoints written before this revision keep their chained form (and stay verifiable as they
were); the tree covers their events too: the first seal after the upgrade builds the tiles from
the seals (see gateway/audit/tiles.py), and every checkpoint from then on carries a note.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE audit_checkpoints ADD COLUMN tree_root bytea, ADD COLUMN note text, "
        "ADD CONSTRAINT ck_audit_checkpoints_tree_root "
        "CHECK (tree_root IS NULL OR length(tree_root) = 32), "
        "ADD CONSTRAINT ck_audit_checkpoints_note CHECK ((note IS NULL) = (tree_root IS NULL))"
    )
    op.execute(
        "CREATE TABLE audit_tiles ("
        " level smallint NOT NULL,"
        " index bigint NOT NULL,"
        " hashes bytea NOT NULL,"
        " CONSTRAINT pk_audit_tiles PRIMARY KEY (level, index),"
        " CONSTRAINT ck_audit_tiles_hashes"
        " CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0))"
    )
    op.execute(
        "CREATE TABLE audit_keys ("
        " key_id varchar(32) NOT NULL,"
        " public_key bytea NOT NULL,"
        " first_checkpoint bigint NOT NULL,"
        " first_used_at timestamp with time zone NOT NULL,"
        " CONSTRAINT pk_audit_keys PRIMARY KEY (key_id),"
        " CONSTRAINT ck_audit_keys_public_key CHECK (length(public_key) = 32))"
    )
    op.execute(
        "CREATE TABLE audit_cosignatures ("
        " tree_size bigint NOT NULL,"
        " witness varchar(200) NOT NULL,"
        " key_id bytea NOT NULL,"
        " signed_at timestamp with time zone NOT NULL,"
        " signature text NOT NULL,"
        " received_at timestamp with time zone NOT NULL DEFAULT now(),"
        " CONSTRAINT pk_audit_cosignatures PRIMARY KEY (tree_size, witness, key_id))"
    )
    role = GATEWAY_ROLE
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON audit_tiles, audit_cosignatures TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON audit_keys TO {role}")


def downgrade() -> None:
    op.execute("DROP TABLE audit_cosignatures")
    op.execute("DROP TABLE audit_keys")
    op.execute("DROP TABLE audit_tiles")
    op.execute(
        "ALTER TABLE audit_checkpoints DROP CONSTRAINT ck_audit_checkpoints_note, "
        "DROP CONSTRAINT ck_audit_checkpoints_tree_root, DROP COLUMN note, DROP COLUMN tree_root"
    )
