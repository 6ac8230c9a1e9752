"""The relational model. The first migration creates exactly these tables and constraints.

Constraints live in the database too (CHECKs on every enum, foreign keys, unique keys), so that a
script, a second service or a hand-typed statement cannot store what the gateway would refuse.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Sequence,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from gateway.domain import (
    AccessOutcome,
    ActorKind,
    Capability,
    Category,
    CleansableField,
    ConsentEventKind,
    ConsentMethod,
    EnrichedField,
    LegalBasis,
    MembershipStatus,
    ProfileField,
    Role,
    Tier,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def one_of(column: str, values: type[enum.Enum]) -> str:
    """SQL for `column IN (...)` over an enum's values, for CHECK constraints."""
    quoted = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} IN ({quoted})"


def subset_of(column: str, values: type[enum.Enum]) -> str:
    """SQL for an array column whose elements all come from an enum."""
    quoted = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} <@ ARRAY[{quoted}]::text[]"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: DateTime(timezone=True),
        uuid.UUID: UUID(as_uuid=True),
        dict[str, Any]: JSONB,
    }


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))


def _created_at() -> Mapped[dt.datetime]:
    return mapped_column(server_default=func.now())


class Purpose(Base):
    """A registered purpose, loaded from the policy file; never deleted, only retired."""

    __tablename__ = "purposes"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    legal_basis: Mapped[str] = mapped_column(String(32))
    title_nb: Mapped[str] = mapped_column(Text)
    title_en: Mapped[str] = mapped_column(Text)
    description_nb: Mapped[str] = mapped_column(Text)
    description_en: Mapped[str] = mapped_column(Text)
    required_consent_method: Mapped[str | None] = mapped_column(String(16))
    notice_version: Mapped[str] = mapped_column(String(32))
    accepted_notice_versions: Mapped[list[str]] = mapped_column(ARRAY(Text))
    consent_lifetime: Mapped[dt.timedelta | None] = mapped_column(Interval)
    retired: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    # The sign-up form's wording of a consent purpose, and whether it may be tied to joining.
    sign_up_nb: Mapped[str | None] = mapped_column(Text)
    sign_up_en: Mapped[str | None] = mapped_column(Text)
    sign_up_conditional: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (
        CheckConstraint("key ~ '^[a-z][a-z0-9_]*$'", name="key_format"),
        CheckConstraint(
            "(sign_up_nb IS NULL) = (sign_up_en IS NULL) "
            "AND (sign_up_nb IS NULL OR legal_basis = 'CONSENT') "
            "AND (NOT sign_up_conditional OR (sign_up_nb IS NOT NULL "
            "AND required_consent_method = 'CONDITIONAL'))",
            name="sign_up",
        ),
        CheckConstraint(one_of("legal_basis", LegalBasis), name="legal_basis"),
        CheckConstraint(
            "required_consent_method IS NULL OR "
            + one_of("required_consent_method", ConsentMethod),
            name="required_consent_method",
        ),
        # A consent purpose names the method it needs and how long a consent lasts; others do not.
        CheckConstraint(
            "(legal_basis = 'CONSENT') = (required_consent_method IS NOT NULL)",
            name="method_iff_consent",
        ),
        CheckConstraint(
            "(legal_basis = 'CONSENT') = (consent_lifetime IS NOT NULL)",
            name="lifetime_iff_consent",
        ),
        CheckConstraint(
            "consent_lifetime IS NULL OR consent_lifetime > interval '0'", name="lifetime_positive"
        ),
        CheckConstraint(
            "notice_version = ANY (accepted_notice_versions)", name="current_notice_accepted"
        ),
    )


class PurposeCategory(Base):
    """The data categories a purpose may use."""

    __tablename__ = "purpose_categories"

    purpose_key: Mapped[str] = mapped_column(
        ForeignKey("purposes.key", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(String(32), primary_key=True)

    __table_args__ = (CheckConstraint(one_of("category", Category), name="category"),)


class Member(Base):
    """The data subject, with the base fields processed under the membership contract."""

    __tablename__ = "members"

    id: Mapped[uuid.UUID] = _uuid_pk()
    # contact
    first_name: Mapped[str] = mapped_column(Text)
    last_name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    # address
    street: Mapped[str | None] = mapped_column(Text)
    postal_code: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    # membership
    tier: Mapped[str] = mapped_column(String(16), server_default=Tier.BASIC.value)
    points: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    member_since: Mapped[dt.date] = mapped_column(Date, server_default=func.current_date())
    membership_status: Mapped[str] = mapped_column(
        String(16), server_default=MembershipStatus.ACTIVE.value
    )
    # status
    deceased: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    # The membership terms (the contract purpose's notice version) accepted at sign-up; NULL for
    # members moved in from a register that did not record it.
    terms_version: Mapped[str | None] = mapped_column(String(32))
    # The identity provider's `sub` for this member, when member tokens come from one.
    external_subject: Mapped[str | None] = mapped_column(String(255), unique=True)
    closed_at: Mapped[dt.datetime | None]
    # The app that signed the member up and the idempotency key it sent: a retried sign-up
    # gets the first one's answer.
    enrolled_by_client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    enrollment_key: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint(one_of("tier", Tier), name="tier"),
        CheckConstraint(
            "(membership_status = 'CLOSED') = (closed_at IS NOT NULL)", name="closed_when_closed"
        ),
        CheckConstraint(
            "enrollment_key IS NULL OR enrolled_by_client_id IS NOT NULL", name="key_has_client"
        ),
        UniqueConstraint("enrolled_by_client_id", "enrollment_key"),
        CheckConstraint(one_of("membership_status", MembershipStatus), name="membership_status"),
        CheckConstraint("points >= 0", name="points_not_negative"),
        CheckConstraint("email LIKE '%_@_%'", name="email_shape"),
        CheckConstraint("country IS NULL OR country ~ '^[A-Z]{2}$'", name="country_iso"),
        Index("uq_members_email_lower", func.lower(text("email")), unique=True),
    )


class Client(Base):
    """An API caller: an app, an auditor or an admin, identified by a hashed API key."""

    __tablename__ = "clients"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # The public half of the key, used to find the row; the whole key is only stored hashed.
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    capabilities: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]")
    )
    created_at: Mapped[dt.datetime] = _created_at()
    disabled_at: Mapped[dt.datetime | None]
    # The key before the last rotation, valid until `previous_key_expires_at` (the overlap).
    previous_key_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    previous_key_hash: Mapped[str | None] = mapped_column(String(64))
    previous_key_expires_at: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint(one_of("role", Role), name="role"),
        CheckConstraint(
            "(previous_key_id IS NULL) = (previous_key_hash IS NULL) "
            "AND (previous_key_id IS NULL) = (previous_key_expires_at IS NULL)",
            name="previous_key_complete",
        ),
        CheckConstraint(subset_of("capabilities", Capability), name="capabilities"),
        CheckConstraint("length(key_hash) = 64", name="key_hash_sha256"),
        CheckConstraint("length(btrim(name)) > 0", name="name_not_blank"),
    )


class ClientPurpose(Base):
    """The purposes a client may act under."""

    __tablename__ = "client_purposes"

    client_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    purpose_key: Mapped[str] = mapped_column(ForeignKey("purposes.key"), primary_key=True)


class ConsentEvent(Base):
    """One event in the append-only consent history of a (member, purpose).

    The current state of a consent is the latest event by `seq`. A grant's id is its receipt id.
    """

    __tablename__ = "consent_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    # No foreign key: the evidence outlives an erased member's row for the period docs/members.md
    # states (see Erasure). A trigger (migration 0005) refuses events for members that do not exist.
    member_id: Mapped[uuid.UUID]
    purpose_key: Mapped[str] = mapped_column(ForeignKey("purposes.key"))
    kind: Mapped[str] = mapped_column(String(16))
    method: Mapped[str | None] = mapped_column(String(16))
    notice_version: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(64))
    actor_kind: Mapped[str] = mapped_column(String(16))
    captured_by_client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    evidence: Mapped[str | None] = mapped_column(Text)
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[dt.datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint(one_of("kind", ConsentEventKind), name="kind"),
        CheckConstraint(f"method IS NULL OR {one_of('method', ConsentMethod)}", name="method"),
        CheckConstraint("actor_kind IN ('CLIENT', 'MEMBER', 'SYSTEM')", name="actor_kind"),
        # A grant says how, on which notice, and until when; withdrawals and expiries do not.
        CheckConstraint(
            "(kind = 'GRANTED') = (method IS NOT NULL AND notice_version IS NOT NULL "
            "AND expires_at IS NOT NULL)",
            name="grant_is_complete",
        ),
        CheckConstraint("expires_at IS NULL OR expires_at > occurred_at", name="expires_after"),
        CheckConstraint(
            "(actor_kind = 'CLIENT') = (captured_by_client_id IS NOT NULL)", name="client_actor"
        ),
        CheckConstraint("length(btrim(channel)) > 0", name="channel_not_blank"),
        UniqueConstraint("member_id", "purpose_key", "idempotency_key"),
        Index("ix_consent_events_member_purpose_seq", "member_id", "purpose_key", "seq"),
        Index(
            "ix_consent_events_expires_at", "expires_at", postgresql_where=text("kind = 'GRANTED'")
        ),
    )


class EnrichmentRecord(Base):
    """A value appended from a third party, with its provenance and the consent it relies on."""

    __tablename__ = "enrichment_records"

    id: Mapped[uuid.UUID] = _uuid_pk()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    field: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(32))
    value: Mapped[Any] = mapped_column(JSONB)
    source: Mapped[str] = mapped_column(String(100))
    obtained_at: Mapped[dt.datetime]
    purpose_key: Mapped[str] = mapped_column(ForeignKey("purposes.key"))
    consent_event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consent_events.id"))
    recorded_by_client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(one_of("field", EnrichedField), name="field"),
        CheckConstraint(
            "category IN ('enriched.demographics', 'enriched.lifestyle')", name="category"
        ),
        CheckConstraint("length(btrim(source)) > 0", name="source_not_blank"),
        UniqueConstraint("member_id", "field"),
    )


class CleansingRecord(Base):
    """A correction of existing data against a register, under legitimate interest."""

    __tablename__ = "cleansing_records"

    id: Mapped[uuid.UUID] = _uuid_pk()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    purpose_key: Mapped[str] = mapped_column(ForeignKey("purposes.key"))
    field: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[Any] = mapped_column(JSONB)
    new_value: Mapped[Any] = mapped_column(JSONB)
    source: Mapped[str] = mapped_column(String(100))
    recorded_by_client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(one_of("field", CleansableField), name="field"),
        CheckConstraint("length(btrim(source)) > 0", name="source_not_blank"),
        Index("ix_cleansing_records_member_id", "member_id"),
    )


class MemberNotice(Base):
    """A notice owed to a member (information duty, GDPR Art. 13/14), e.g. after a cleansing."""

    __tablename__ = "member_notices"

    id: Mapped[uuid.UUID] = _uuid_pk()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    cleansing_record_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("cleansing_records.id"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = _created_at()
    due_at: Mapped[dt.datetime]
    delivered_at: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('CLEANSING')", name="kind"),
        CheckConstraint(
            "(kind = 'CLEANSING') = (cleansing_record_id IS NOT NULL)", name="cleansing_has_record"
        ),
        CheckConstraint("due_at >= created_at", name="due_after_created"),
        Index(
            "ix_member_notices_undelivered_due",
            "due_at",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )


class Objection(Base):
    """A member's objection (GDPR Art. 21) to processing under a legitimate-interest purpose."""

    __tablename__ = "objections"

    id: Mapped[uuid.UUID] = _uuid_pk()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    purpose_key: Mapped[str] = mapped_column(ForeignKey("purposes.key"))
    reason: Mapped[str | None] = mapped_column(Text)
    objected_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    lifted_at: Mapped[dt.datetime | None]

    __table_args__ = (
        CheckConstraint("lifted_at IS NULL OR lifted_at >= objected_at", name="lifted_after"),
        # At most one objection in force per member and purpose.
        Index(
            "uq_objections_in_force",
            "member_id",
            "purpose_key",
            unique=True,
            postgresql_where=text("lifted_at IS NULL"),
        ),
    )


class ProfileChange(Base):
    """One change of a member's base field: old and new value, by whom, when (Art. 16)."""

    __tablename__ = "profile_changes"

    id: Mapped[uuid.UUID] = _uuid_pk()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    actor_kind: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    purpose_key: Mapped[str | None] = mapped_column(ForeignKey("purposes.key"))
    changed_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(one_of("field", ProfileField), name="field"),
        CheckConstraint("actor_kind IN ('CLIENT', 'MEMBER')", name="actor_kind"),
        CheckConstraint("(actor_kind = 'CLIENT') = (client_id IS NOT NULL)", name="client_actor"),
        Index("ix_profile_changes_member_id_changed_at", "member_id", "changed_at"),
    )


class Erasure(Base):
    """That a member was erased (Art. 17), when, and until when their consent evidence is kept.

    Holds nothing that identifies the person: the member id is a random pseudonym whose link to
    the person (the members row, its email and external subject) was deleted.
    """

    __tablename__ = "erasures"

    member_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    receipt_id: Mapped[uuid.UUID] = mapped_column(
        unique=True, server_default=text("gen_random_uuid()")
    )
    erased_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    requested_by: Mapped[str] = mapped_column(String(16))
    evidence_kept_until: Mapped[dt.datetime]
    evidence_purged_at: Mapped[dt.datetime | None]
    deleted: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")

    __table_args__ = (
        CheckConstraint("requested_by IN ('MEMBER', 'SYSTEM')", name="requested_by"),
        CheckConstraint("evidence_kept_until >= erased_at", name="kept_after_erasure"),
    )


class RateLimit(Base):
    """Where each client stands with its request rate (GCRA: the theoretical arrival time).

    UNLOGGED: a crash forgets the counters, which only forgives a few seconds of requests; in
    exchange the per-request UPDATE writes no WAL. Rows of idle subjects are deleted by the sealer.
    """

    __tablename__ = "rate_limits"

    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    tat: Mapped[dt.datetime]

    __table_args__ = ({"prefixes": ("UNLOGGED",)},)


class ReadinessProbe(Base):
    """The last time a gateway worker's readiness probe committed a write (GET /readyz): a logged
    row, so its commit waits for the synchronous standby like every access event's does. Rows of
    workers gone for a day are deleted by the next probe."""

    __tablename__ = "readiness_probes"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)
    probed_at: Mapped[dt.datetime]


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# So that reflection (Alembic's comparison of models and database) knows the type.
postgresql_base.ischema_names["xid8"] = Xid8


class AccessEvent(Base):
    """One row per member touched by an operation: who, when, why, and what was released.

    Partitioned by month of `occurred_at` (see migration 0002); append-only in the database.
    """

    __tablename__ = "access_events"

    # A sequence, not an identity: PostgreSQL 15 has no identity columns on partitioned tables.
    id: Mapped[int] = mapped_column(BigInteger, Sequence("access_events_id_seq"), primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(primary_key=True, server_default=func.now())
    request_id: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(100))
    actor_kind: Mapped[str] = mapped_column(String(16))
    # No foreign key (checking one cost a third of an event's insert, migration 0009): the client
    # is the request's authenticated one, and a client the log names cannot be deleted (trigger).
    client_id: Mapped[uuid.UUID | None]
    # No foreign keys to members: the log must outlive a member's row (erasure) and must record
    # attempts on ids that do not exist.
    actor_member_id: Mapped[uuid.UUID | None]
    member_id: Mapped[uuid.UUID | None]
    # Free text, not a foreign key: attempts under unknown purposes are recorded as declared.
    purpose: Mapped[str | None] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    fields_requested: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    fields_released: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    # {field: reason code} for every withheld field.
    fields_withheld: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    consent_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), server_default="{}"
    )
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The inserting transaction: the sealer seals only events whose transaction has ended.
    txid: Mapped[int] = mapped_column(Xid8, server_default=text("pg_current_xact_id()"))
    # The event's RFC 6962 leaf hash when the gateway computed it as it wrote the event
    # (gateway.audit.group_commit); the sealer hashes the columns of an event without one.
    leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        CheckConstraint(one_of("actor_kind", ActorKind), name="actor_kind"),
        CheckConstraint(one_of("outcome", AccessOutcome), name="outcome"),
        CheckConstraint(
            f"legal_basis IS NULL OR {one_of('legal_basis', LegalBasis)}", name="legal_basis"
        ),
        CheckConstraint("(actor_kind = 'CLIENT') = (client_id IS NOT NULL)", name="client_actor"),
        CheckConstraint(
            "(actor_kind = 'MEMBER') = (actor_member_id IS NOT NULL)", name="member_actor"
        ),
        CheckConstraint("jsonb_typeof(fields_withheld) = 'object'", name="withheld_is_object"),
        CheckConstraint("leaf_hash IS NULL OR length(leaf_hash) = 32", name="leaf_hash"),
        Index("ix_access_events_member_occurred", "member_id", "occurred_at"),
        Index("ix_access_events_occurred", "occurred_at"),
        Index("ix_access_events_client_occurred", "client_id", "occurred_at"),
        Index("ix_access_events_txid_id", "txid", "id"),
    )


# The columns an access event records, in table order: everything but the sealer's `txid` and
# `leaf_hash` (a hash of the others).
ACCESS_EVENT_COLUMNS: tuple[str, ...] = tuple(
    column.name
    for column in AccessEvent.__table__.columns
    if column.name not in ("txid", "leaf_hash")
)


# Which members each transaction touched, for audience syncs (`since=`): written by statement
# triggers on members, consent_events, objections and enrichment_records (migration 0012), never
# by the gateway. No key: a transaction touching a member twice may leave two rows.
member_changes = Table(
    "member_changes",
    Base.metadata,
    Column("member_id", UUID(as_uuid=True), nullable=False),
    Column("txid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()")),
    Index("ix_member_changes_txid", "txid"),
)


class AudienceExport(Base):
    """One audience export: what it selected, the snapshot it started from (the next sync's
    cursor), and its signed manifest once it finished."""

    __tablename__ = "audience_exports"

    id: Mapped[uuid.UUID] = _uuid_pk()
    client_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("clients.id"))
    purpose_key: Mapped[str] = mapped_column(String(64), ForeignKey("purposes.key"))
    filter: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    format: Mapped[str] = mapped_column(String(8))
    since_export_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("audience_exports.id"))
    snapshot: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint("format IN ('csv', 'jsonl')", name="format"),
        CheckConstraint("(finished_at IS NULL) = (manifest IS NULL)", name="finished"),
        Index("ix_audience_exports_client_started", "client_id", "started_at"),
    )


class AuditCheckpoint(Base):
    """A signed checkpoint: a batch of sealed events (or a retention), chained to the previous."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    first_position: Mapped[int] = mapped_column(BigInteger)
    last_position: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(Integer)
    horizon: Mapped[int] = mapped_column(Xid8)
    batch_root: Mapped[bytes] = mapped_column(LargeBinary)
    previous_hash: Mapped[bytes] = mapped_column(LargeBinary)
    checkpoint_hash: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    # The root of the log's whole Merkle tree at size last_position, and the checkpoint as a
    # C2SP signed note (None on checkpoints written before the tree, migration 0007).
    tree_root: Mapped[bytes | None] = mapped_column(LargeBinary)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("kind IN ('SEAL', 'RETENTION')", name="kind"),
        CheckConstraint("tree_root IS NULL OR length(tree_root) = 32", name="tree_root"),
        CheckConstraint("(note IS NULL) = (tree_root IS NULL)", name="note"),
        CheckConstraint("length(batch_root) = 32", name="batch_root"),
        CheckConstraint("length(previous_hash) = 32", name="previous_hash"),
        CheckConstraint("length(checkpoint_hash) = 32", name="checkpoint_hash"),
        CheckConstraint("last_position = first_position + event_count - 1", name="positions"),
    )


class AuditSeal(Base):
    """An event's place in the sealed log and its hash."""

    __tablename__ = "audit_seals"

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    occurred_at: Mapped[dt.datetime]
    event_hash: Mapped[bytes] = mapped_column(LargeBinary)
    checkpoint_id: Mapped[int] = mapped_column(BigInteger)

    # No index on checkpoint_id: a checkpoint's seals are its positions (migration 0010).
    __table_args__ = (CheckConstraint("length(event_hash) = 32", name="event_hash"),)


class AuditTile(Base):
    """Up to 256 hashes of the log's Merkle tree (C2SP tlog-tiles layout; gateway/audit/tree.py)."""

    __tablename__ = "audit_tiles"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hashes: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        CheckConstraint(
            "length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0", name="hashes"
        ),
    )


class AuditKey(Base):
    """A key the log's checkpoints were signed with, from its first checkpoint on."""

    __tablename__ = "audit_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    first_checkpoint: Mapped[int] = mapped_column(BigInteger)
    first_used_at: Mapped[dt.datetime]

    __table_args__ = (CheckConstraint("length(public_key) = 32", name="public_key"),)


class AuditCosignature(Base):
    """A witness's cosignature (C2SP tlog-cosignature) on the checkpoint of a tree size."""

    __tablename__ = "audit_cosignatures"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    witness: Mapped[str] = mapped_column(String(200), primary_key=True)
    key_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    signed_at: Mapped[dt.datetime]
    signature: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
