"""Audit trail: monthly partitions, append-only in the database, seals and signed checkpoints,
and the restricted role the gateway connects as.

- access_events becomes partitioned by month (retention drops whole partitions) and records the
  inserting transaction's id (`txid`), which tells the sealer when an event can no longer be
  overtaken by a late commit.
- audit_seals gives each committed event a contiguous position and its hash; audit_checkpoints
  chains signed checkpoints over the sealed batches.
- UPDATE, DELETE and TRUNCATE on the three tables are refused by triggers that fire whatever the
  session's session_replication_role (ENABLE ALWAYS).
- The role `tillit_gateway` may only INSERT and SELECT audit rows. Roles belong to the cluster, not
  the database: the role is created if missing and never dropped by a downgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_ROLE = "tillit_gateway"
AUDIT_TABLES = ("access_events", "audit_seals", "audit_checkpoints")

PARTITIONED_ACCESS_EVENTS = """
CREATE TABLE access_events (
    id bigint NOT NULL DEFAULT nextval('access_events_id_seq'),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    request_id varchar(128) NOT NULL,
    operation varchar(100) NOT NULL,
    actor_kind varchar(16) NOT NULL,
    client_id uuid CONSTRAINT fk_access_events_client_id_clients REFERENCES clients (id),
    actor_member_id uuid,
    member_id uuid,
    purpose varchar(64),
    legal_basis varchar(32),
    outcome varchar(16) NOT NULL,
    fields_requested text[] NOT NULL DEFAULT '{}',
    fields_released text[] NOT NULL DEFAULT '{}',
    fields_withheld jsonb NOT NULL DEFAULT '{}',
    consent_ids uuid[] NOT NULL DEFAULT '{}',
    details jsonb NOT NULL DEFAULT '{}',
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT pk_access_events PRIMARY KEY (id, occurred_at),
    CONSTRAINT ck_access_events_actor_kind
        CHECK (actor_kind IN ('CLIENT', 'MEMBER', 'SYSTEM', 'ANONYMOUS')),
    CONSTRAINT ck_access_events_outcome
        CHECK (outcome IN ('RELEASED', 'PARTIAL', 'DENIED', 'NOT_FOUND', 'WRITTEN', 'UNCHANGED')),
    CONSTRAINT ck_access_events_legal_basis CHECK (legal_basis IS NULL OR legal_basis IN
        ('CONSENT', 'CONTRACT', 'LEGITIMATE_INTEREST', 'LEGAL_OBLIGATION')),
    CONSTRAINT ck_access_events_client_actor CHECK ((actor_kind = 'CLIENT') = (client_id IS NOT NULL)),
    CONSTRAINT ck_access_events_member_actor
        CHECK ((actor_kind = 'MEMBER') = (actor_member_id IS NOT NULL)),
    CONSTRAINT ck_access_events_withheld_is_object CHECK (jsonb_typeof(fields_withheld) = 'object')
) PARTITION BY RANGE (occurred_at)
"""

# Creates the monthly partitions of access_events that do not exist yet, from `from_month` to
# `months_ahead` months after now, each with its own TRUNCATE guard (TRUNCATE triggers are not
# inherited). SECURITY DEFINER: the gateway role may add partitions but owns none of them.
ENSURE_PARTITIONS = """
CREATE FUNCTION tillit_ensure_audit_partitions(from_month date, months_ahead integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    month date := date_trunc('month', from_month)::date;
    last_month date := (date_trunc('month', now()) + make_interval(months => months_ahead))::date;
    name text;
    created integer := 0;
BEGIN
    WHILE month <= last_month LOOP
        name := format('access_events_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF access_events FOR VALUES FROM (%L) TO (%L)',
                name, month, (month + interval '1 month')::date);
            EXECUTE format(
                'CREATE TRIGGER access_events_no_truncate BEFORE TRUNCATE ON %I '
                'FOR EACH STATEMENT EXECUTE FUNCTION tillit_refuse_audit_change()', name);
            EXECUTE format('ALTER TABLE %I ENABLE ALWAYS TRIGGER access_events_no_truncate', name);
            created := created + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN created;
END $$
"""

REFUSE_CHANGE = """
CREATE FUNCTION tillit_refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$
"""


def _append_only(table: str) -> None:
    op.execute(
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION tillit_refuse_audit_change()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION tillit_refuse_audit_change()"
    )
    # ENABLE ALWAYS: the triggers fire even with session_replication_role = replica.
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_change")
    op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate")


def upgrade() -> None:
    op.execute(REFUSE_CHANGE)

    # -- access_events, partitioned by month; rows of the first revision move over ---------------
    op.execute("ALTER TABLE access_events RENAME TO access_events_0001")
    for index in (
        "pk_access_events",
        "ix_access_events_occurred",
        "ix_access_events_member_occurred",
        "ix_access_events_client_occurred",
    ):
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_0001")
    op.execute("ALTER SEQUENCE access_events_id_seq RENAME TO access_events_0001_id_seq")
    op.execute("CREATE SEQUENCE access_events_id_seq AS bigint")
    op.execute(PARTITIONED_ACCESS_EVENTS)
    op.execute("ALTER SEQUENCE access_events_id_seq OWNED BY access_events.id")
    op.execute("CREATE INDEX ix_access_events_occurred ON access_events (occurred_at)")
    op.execute(
        "CREATE INDEX ix_access_events_member_occurred ON access_events (member_id, occurred_at)"
    )
    op.execute(
        "CREATE INDEX ix_access_events_client_occurred ON access_events (client_id, occurred_at)"
    )
    op.execute("CREATE INDEX ix_access_events_txid ON access_events (txid)")
    op.execute(ENSURE_PARTITIONS)
    op.execute(
        "SELECT tillit_ensure_audit_partitions(least(date_trunc('month', now())::date, "
        "(SELECT date_trunc('month', min(occurred_at))::date FROM access_events_0001)), 2)"
    )
    op.execute(
        "INSERT INTO access_events (id, occurred_at, request_id, operation, actor_kind, client_id, "
        "actor_member_id, member_id, purpose, legal_basis, outcome, fields_requested, "
        "fields_released, fields_withheld, consent_ids, details) "
        "SELECT id, occurred_at, request_id, operation, actor_kind, client_id, actor_member_id, "
        "member_id, purpose, legal_basis, outcome, fields_requested, fields_released, "
        "fields_withheld, consent_ids, details FROM access_events_0001 ORDER BY id"
    )
    op.execute(
        "SELECT setval('access_events_id_seq', "
        "coalesce((SELECT max(id) FROM access_events), 0) + 1, false)"
    )
    op.execute("DROP TABLE access_events_0001")

    # -- seals and checkpoints -------------------------------------------------------------------
    op.execute(
        """
        CREATE TABLE audit_checkpoints (
            id bigint NOT NULL,
            kind varchar(16) NOT NULL,
            created_at timestamptz NOT NULL,
            first_position bigint NOT NULL,
            last_position bigint NOT NULL,
            event_count integer NOT NULL,
            horizon xid8 NOT NULL,
            batch_root bytea NOT NULL,
            previous_hash bytea NOT NULL,
            checkpoint_hash bytea NOT NULL,
            signature bytea NOT NULL,
            key_id varchar(32) NOT NULL,
            details jsonb NOT NULL DEFAULT '{}',
            CONSTRAINT pk_audit_checkpoints PRIMARY KEY (id),
            CONSTRAINT ck_audit_checkpoints_kind CHECK (kind IN ('SEAL', 'RETENTION')),
            CONSTRAINT ck_audit_checkpoints_batch_root CHECK (length(batch_root) = 32),
            CONSTRAINT ck_audit_checkpoints_previous_hash CHECK (length(previous_hash) = 32),
            CONSTRAINT ck_audit_checkpoints_checkpoint_hash CHECK (length(checkpoint_hash) = 32),
            CONSTRAINT ck_audit_checkpoints_positions
                CHECK (last_position = first_position + event_count - 1)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE audit_seals (
            position bigint NOT NULL,
            event_id bigint NOT NULL,
            occurred_at timestamptz NOT NULL,
            event_hash bytea NOT NULL,
            checkpoint_id bigint NOT NULL,
            CONSTRAINT pk_audit_seals PRIMARY KEY (position),
            CONSTRAINT uq_audit_seals_event_id UNIQUE (event_id),
            CONSTRAINT ck_audit_seals_event_hash CHECK (length(event_hash) = 32)
        )
        """
    )
    op.execute("CREATE INDEX ix_audit_seals_checkpoint ON audit_seals (checkpoint_id)")
    for table in AUDIT_TABLES:
        _append_only(table)

    # -- the gateway's restricted role -----------------------------------------------------------
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GATEWAY_ROLE}') "
        f"THEN CREATE ROLE {GATEWAY_ROLE} NOLOGIN; END IF; END $$"
    )
    role = GATEWAY_ROLE
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    op.execute(
        f"GRANT SELECT ON alembic_version, purposes, purpose_categories, clients, client_purposes "
        f"TO {role}"
    )
    op.execute(f"GRANT SELECT, UPDATE ON members TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON consent_events, cleansing_records TO {role}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON member_notices, objections TO {role}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON enrichment_records TO {role}")
    op.execute(f"GRANT SELECT, INSERT ON {', '.join(AUDIT_TABLES)} TO {role}")
    op.execute(f"GRANT USAGE ON SEQUENCE access_events_id_seq, consent_events_seq_seq TO {role}")
    op.execute("REVOKE ALL ON FUNCTION tillit_ensure_audit_partitions(date, integer) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION tillit_ensure_audit_partitions(date, integer) TO {role}")


def downgrade() -> None:
    role = GATEWAY_ROLE
    op.execute(
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}; "
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}; "
        f"REVOKE ALL ON SCHEMA public FROM {role}; END IF; END $$"
    )
    op.execute("DROP TABLE audit_seals")
    op.execute("DROP TABLE audit_checkpoints")
    # Back to one unpartitioned table, keeping the rows (triggers go with the partitioned table).
    op.execute(
        "CREATE TABLE access_events_flat (LIKE access_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    op.execute("ALTER TABLE access_events_flat ALTER COLUMN id DROP DEFAULT")
    op.execute("INSERT INTO access_events_flat SELECT * FROM access_events")
    op.execute("DROP TABLE access_events")
    op.execute("DROP FUNCTION tillit_ensure_audit_partitions(date, integer)")
    op.execute("DROP FUNCTION tillit_refuse_audit_change()")
    op.execute("ALTER TABLE access_events_flat RENAME TO access_events")
    op.execute("ALTER TABLE access_events DROP COLUMN txid")
    op.execute("ALTER TABLE access_events ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER TABLE access_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY")
    op.execute(
        "SELECT setval(pg_get_serial_sequence('access_events', 'id'), "
        "coalesce((SELECT max(id) FROM access_events), 0) + 1, false)"
    )
    op.execute("ALTER TABLE access_events ADD CONSTRAINT pk_access_events PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE access_events ADD CONSTRAINT fk_access_events_client_id_clients "
        "FOREIGN KEY (client_id) REFERENCES clients (id)"
    )
    op.execute("CREATE INDEX ix_access_events_occurred ON access_events (occurred_at)")
    op.execute(
        "CREATE INDEX ix_access_events_member_occurred ON access_events (member_id, occurred_at)"
    )
    op.execute(
        "CREATE INDEX ix_access_events_client_occurred ON access_events (client_id, occurred_at)"
    )
