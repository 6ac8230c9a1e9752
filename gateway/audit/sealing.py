"""Checkpoints of the access log: event hashes, Merkle roots, signed and chained checkpoints.

The sealer (gateway/audit/sealer.py) uses these to seal; verification (gateway/audit/verify.py)
to check.

How sealing works:

Requests only INSERT access events; nothing on the request path locks a shared row. The sealer, a
single task per database, periodically:

1. takes the horizon: the oldest transaction still running (`pg_snapshot_xmin`). An event written
   by a transaction below the horizon has committed (or never will), so no later commit can come
   before it: such events are final;
2. gives the final events not yet sealed the next positions, in (txid, id) order, and stores each
   one's hash (RFC 6962 leaf hash of its canonical JSON);
3. appends their hashes to the log's one Merkle tree (gateway/audit/tree.py, stored as tiles by
   gateway/audit/tiles.py);
4. writes a checkpoint over the batch: its Merkle root (RFC 6962), chained to the previous
   checkpoint's hash and signed with Ed25519 under a key kept outside the database; and the
   root of the whole tree at its new size as a C2SP signed note (gateway/notes.py), which
   witnesses cosign and proofs are checked against.

A checkpoint is written even when no event arrived, so that a gap in time shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.tree import EMPTY_ROOT, merkle_root
from gateway.notes import TreeHead, sign_checkpoint
from gateway.signing import Signer
from gateway.store.models import ACCESS_EVENT_COLUMNS

__all__ = ["EMPTY_ROOT", "merkle_root"]

# One sealer per database: this advisory lock key (an arbitrary constant, "TILLSEAL").
SEAL_LOCK = 0x54494C4C5345414C
MAX_BATCH = 10_000
GENESIS = bytes(32)
CHECKPOINT_DOMAIN = b"tillit-checkpoint-v1\n"

EVENT_COLUMNS = ACCESS_EVENT_COLUMNS


def _iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with microseconds, as `isoformat(timespec="microseconds")` writes it.

    orjson writes a UTC datetime with a fraction the same way, three times faster (the sealer
    does this for every event); it leaves the fraction out when it is zero, so those (and any
    other zone) take the slow road.
    """
    if value.microsecond and value.tzinfo is dt.UTC:
        return orjson.dumps(value)[1:-1].decode()
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _json(value: Any) -> Any:
    """A jsonb column's value: decoded already, or its text (the sealer reads it as text)."""
    return orjson.loads(value) if type(value) is str else value


def event_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """An access event as plain JSON values: what its hash covers, and what exports show.

    `row` is the stored row by column name (a dict or an asyncpg record); the two jsonb columns
    may be decoded or their text.
    """
    return {
        "id": int(row["id"]),
        "occurred_at": _iso(row["occurred_at"]),
        "request_id": row["request_id"],
        "operation": row["operation"],
        "actor_kind": row["actor_kind"],
        "client_id": _text(row["client_id"]),
        "actor_member_id": _text(row["actor_member_id"]),
        "member_id": _text(row["member_id"]),
        "purpose": row["purpose"],
        "legal_basis": row["legal_basis"],
        "outcome": row["outcome"],
        "fields_requested": list(row["fields_requested"]),
        "fields_released": list(row["fields_released"]),
        "fields_withheld": _json(row["fields_withheld"]),
        "consent_ids": [str(c) for c in row["consent_ids"]],
        "details": _json(row["details"]),
    }


def canonical_event(row: Mapping[str, Any]) -> bytes:
    """The bytes an event's hash covers: every column but the internal txid, as sorted JSON."""
    document = event_document(row)
    # Sorted keys, no spaces, UTF-8: the same bytes as json.dumps(sort_keys=True,
    # separators=(",", ":"), ensure_ascii=False), written faster (the sealer hashes every event).
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


# What differs between the events of one operation's class (gateway.audit.trail): their id, member
# and consents. The rest of an event's canonical JSON is made once per class, with these holes.
_HOLES = {name: "\x00" + name for name in ("consent_ids", "id", "member_id")}
_CUTS = {name: orjson.dumps(hole) for name, hole in _HOLES.items()}


def event_template(row: Mapping[str, Any]) -> tuple[bytes, bytes, bytes, bytes] | None:
    """canonical_event(row) cut where its consents, id and member go (in that order, the keys'
    sorted order), for template_hash; None if the row's own values would be mistaken for a cut
    (no stored value can hold the NUL the cuts are marked with, so this is a safeguard)."""
    text = orjson.dumps({**event_document(row), **_HOLES}, option=orjson.OPT_SORT_KEYS)
    if any(text.count(cut) != 1 for cut in _CUTS.values()):
        return None
    consents, rest = text.split(_CUTS["consent_ids"])
    id_, rest = rest.split(_CUTS["id"])
    member, end = rest.split(_CUTS["member_id"])
    return consents, id_, member, end


def template_hash(
    template: tuple[bytes, bytes, bytes, bytes],
    event_id: int,
    member_id: Any,
    consent_ids: Sequence[Any],
) -> bytes:
    """event_hash of the event whose other columns made `template` (see event_template)."""
    before_consents, before_id, before_member, end = template
    return hashlib.sha256(
        b"".join(
            (
                b"\x00",
                before_consents,
                orjson.dumps([str(c) for c in consent_ids]),
                before_id,
                b"%d" % event_id,
                before_member,
                b"null" if member_id is None else b'"%s"' % str(member_id).encode(),
                end,
            )
        )
    ).digest()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def event_hash(row: Mapping[str, Any]) -> bytes:
    """RFC 6962 leaf hash of the event."""
    return hashlib.sha256(b"\x00" + canonical_event(row)).digest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: int
    kind: str
    created_at: dt.datetime
    first_position: int
    last_position: int
    event_count: int
    horizon: int
    batch_root: bytes
    previous_hash: bytes
    checkpoint_hash: bytes
    signature: bytes
    key_id: str
    details: Mapping[str, Any]
    # The root of the whole tree at size last_position and the signed note committing to it
    # (None on checkpoints written before the tree existed).
    tree_root: bytes | None = None
    note: str | None = None

    def canonical(self) -> bytes:
        return checkpoint_content(
            id=self.id,
            kind=self.kind,
            created_at=self.created_at,
            first_position=self.first_position,
            last_position=self.last_position,
            event_count=self.event_count,
            horizon=self.horizon,
            batch_root=self.batch_root,
            previous_hash=self.previous_hash,
            details=self.details,
        )

    def summary(self) -> dict[str, Any]:
        """The checkpoint as a manifest or an auditor quotes it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "created_at": _iso(self.created_at),
            "last_position": self.last_position,
            "checkpoint_hash": self.checkpoint_hash.hex(),
            "key_id": self.key_id,
        }


def checkpoint_content(
    *,
    id: int,  # the checkpoint's id, as stored
    kind: str,
    created_at: dt.datetime,
    first_position: int,
    last_position: int,
    event_count: int,
    horizon: int,
    batch_root: bytes,
    previous_hash: bytes,
    details: Mapping[str, Any],
) -> bytes:
    document = {
        "id": id,
        "kind": kind,
        "created_at": _iso(created_at),
        "first_position": first_position,
        "last_position": last_position,
        "event_count": event_count,
        "horizon": str(horizon),
        "batch_root": batch_root.hex(),
        "previous_hash": previous_hash.hex(),
        "details": details,
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CHECKPOINT_DOMAIN + body.encode()


_CHECKPOINT_COLUMNS = (
    "id, kind, created_at, first_position, last_position, event_count, horizon::text AS horizon, "
    "batch_root, previous_hash, checkpoint_hash, signature, key_id, details, tree_root, note"
)


def _checkpoint(row: Any) -> Checkpoint:
    values = dict(row._mapping)
    values["horizon"] = int(values["horizon"])
    return Checkpoint(**values)


async def last_checkpoint(connection: AsyncConnection) -> Checkpoint | None:
    row = (
        await connection.execute(
            text(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY id DESC LIMIT 1")  # noqa: S608  # columns are this module's constant
        )
    ).first()
    return _checkpoint(row) if row else None


async def checkpoints_after(connection: AsyncConnection, after_id: int) -> list[Checkpoint]:
    rows = await connection.execute(
        text(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE id > :id ORDER BY id"),  # noqa: S608  # constant columns
        {"id": after_id},
    )
    return [_checkpoint(row) for row in rows]


async def all_checkpoints(connection: AsyncConnection) -> list[Checkpoint]:
    rows = await connection.execute(
        text(f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY id")  # noqa: S608  # constant columns
    )
    return [_checkpoint(row) for row in rows]


async def write_checkpoint(
    connection: AsyncConnection,
    signer: Signer,
    *,
    kind: str,
    previous: Checkpoint | None,
    horizon: int,
    event_count: int,
    batch_root: bytes,
    details: Mapping[str, Any],
    now: dt.datetime,
    tree_root: bytes,
) -> Checkpoint:
    """Sign and insert the next checkpoint in the chain, with the tree's root at its size."""
    first_position = previous.last_position + 1 if previous else 1
    fields: dict[str, Any] = {
        "id": previous.id + 1 if previous else 1,
        "kind": kind,
        "created_at": now.astimezone(dt.UTC),
        "first_position": first_position,
        "last_position": first_position + event_count - 1,
        "event_count": event_count,
        "horizon": horizon,
        "batch_root": batch_root,
        "previous_hash": previous.checkpoint_hash if previous else GENESIS,
        "details": details,
    }
    checkpoint_hash = hashlib.sha256(checkpoint_content(**fields)).digest()
    note = sign_checkpoint(TreeHead(signer.origin, fields["last_position"], tree_root), signer)
    checkpoint = Checkpoint(
        **fields,
        checkpoint_hash=checkpoint_hash,
        signature=signer.sign(checkpoint_hash),
        key_id=signer.key_id,
        tree_root=tree_root,
        note=note,
    )
    await connection.execute(
        text(
            "INSERT INTO audit_checkpoints (id, kind, created_at, first_position, last_position, "
            "event_count, horizon, batch_root, previous_hash, checkpoint_hash, signature, key_id, "
            "details, tree_root, note) VALUES (:id, :kind, :created_at, :first_position, "
            ":last_position, :event_count, CAST(:horizon AS xid8), :batch_root, :previous_hash, "
            ":checkpoint_hash, :signature, :key_id, CAST(:details AS jsonb), :tree_root, :note)"
        ),
        {
            **fields,
            "checkpoint_hash": checkpoint_hash,
            "signature": checkpoint.signature,
            "key_id": checkpoint.key_id,
            "details": json.dumps(details, sort_keys=True),
            "tree_root": tree_root,
            "note": note,
        },
    )
    if previous is None or previous.key_id != signer.key_id or previous.note is None:
        # A key signs from its first checkpoint on: listed for GET /audit/keys.
        await connection.execute(
            text(
                "INSERT INTO audit_keys (key_id, public_key, first_checkpoint, first_used_at) "
                "SELECT CAST(:key_id AS varchar), CAST(:public_key AS bytea), min(id), "
                "min(created_at) FROM audit_checkpoints WHERE key_id = :key_id "
                "ON CONFLICT (key_id) DO NOTHING"
            ),
            {"key_id": signer.key_id, "public_key": signer.verifier.raw},
        )
    return checkpoint
