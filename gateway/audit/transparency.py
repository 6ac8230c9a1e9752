"""What the log publishes so that anyone can check it without trusting the gateway: its keys, its
checkpoints as signed notes with witnesses' cosignatures, and proofs (gateway/audit/tiles.py).

Nothing here reveals more than hashes: an event's leaf (what it contains) stays behind the
auditor key or the member's own token.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.audit.log import LogEntry
from gateway.audit.sealing import EVENT_COLUMNS, canonical_event
from gateway.audit.tiles import MAX_PROOFS, inclusion_proofs
from gateway.errors import BadUserInput
from gateway.notes import NoteError, NoteKey, TreeHead, cosignature_time, open_checkpoint
from gateway.signing import Signer
from gateway.store.db import Raw

# A cosignature stating a time further ahead of the database's clock than this is refused.
MAX_CLOCK_SKEW_SECONDS = 300


class CosignatureRefused(Exception):
    """A posted cosignature the log does not keep; `status` and the message say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Published:
    size: int
    note: str  # the log's signed note, cosignatures appended


async def latest_size(raw: Raw) -> int | None:
    """The size of the newest checkpoint with a note (None before the first)."""
    row = await raw.fetchrow(
        "SELECT last_position FROM audit_checkpoints WHERE note IS NOT NULL ORDER BY id DESC "
        "LIMIT 1"
    )
    return None if row is None else int(row["last_position"])


async def checkpoint_note(raw: Raw, size: int | None = None) -> tuple[int, str] | None:
    """The log's signed note of the newest checkpoint (or of tree size `size`), without the
    witnesses' cosignatures, and its size."""
    if size is None:
        row = await raw.fetchrow(
            "SELECT last_position, note FROM audit_checkpoints WHERE note IS NOT NULL "
            "ORDER BY id DESC LIMIT 1"
        )
    else:
        row = await raw.fetchrow(
            "SELECT last_position, note FROM audit_checkpoints WHERE note IS NOT NULL "
            "AND last_position = $1 ORDER BY id DESC LIMIT 1",
            size,
        )
    return None if row is None else (int(row["last_position"]), row["note"])


async def published(raw: Raw, size: int | None = None) -> Published | None:
    """The newest checkpoint (or the one of tree size `size`) with its cosignatures."""
    found = await checkpoint_note(raw, size)
    if found is None:
        return None
    tree_size, note = found
    rows = await raw.fetch(
        "SELECT signature FROM audit_cosignatures WHERE tree_size = $1 ORDER BY witness, key_id",
        tree_size,
    )
    return Published(tree_size, note + "".join(r["signature"] for r in rows))


async def add_cosignatures(
    raw: Raw, posted: str, witnesses: list[NoteKey], signer: Signer
) -> tuple[TreeHead, list[str]]:
    """Keep the cosignatures in `posted` (a checkpoint of this log with witnesses' signature
    lines) by the configured `witnesses`. Refuses, with CosignatureRefused, a note that is not
    one of this log's checkpoints, a cosignature that does not verify, or one by nobody known.
    Returns the checkpoint and the names of the witnesses whose cosignatures were kept."""
    log_key = NoteKey.of_log(signer.origin, signer.verifier)
    try:
        head, note, _ = open_checkpoint(posted, [log_key, *await _past_keys(raw, signer.origin)])
    except NoteError as exc:
        raise CosignatureRefused(400, f"Not a checkpoint of this log: {exc}") from None
    ours = await checkpoint_note(raw, head.size)
    if ours is None or ours[1].split("\n\n", 1)[0] + "\n" != note.text:
        raise CosignatureRefused(
            409, "This log never published that checkpoint (its size and root do not match)."
        )
    times = await raw.fetchrow(_TIMES, head.size)
    # Whole seconds since 1970, compared before any is made a datetime: a witness's clock may be
    # off by MAX_CLOCK_SKEW_SECONDS either way, but it cannot have cosigned before the
    # checkpoint was signed, nor in the future.
    earliest = int(times["signed"]) - MAX_CLOCK_SKEW_SECONDS
    latest = int(times["now"]) + MAX_CLOCK_SKEW_SECONDS
    kept: list[str] = []
    rows: list[tuple[str, bytes, dt.datetime, str]] = []
    for key in witnesses:
        # The same line sent twice is kept once; two different ones by one key are refused.
        lines = {signature.line: signature for signature in note.by(key)}
        if len(lines) > 1:
            raise CosignatureRefused(400, f"{key.name} cosigned this checkpoint more than once.")
        for signature in lines.values():
            timestamp = cosignature_time(key, signature, note.text)
            if timestamp is None:
                raise CosignatureRefused(400, f"The cosignature by {key.name} does not verify.")
            if timestamp > latest:
                raise CosignatureRefused(400, f"The cosignature by {key.name} is from the future.")
            if timestamp < earliest:
                raise CosignatureRefused(
                    400, f"The cosignature by {key.name} is older than the checkpoint it signs."
                )
            signed_at = dt.datetime.fromtimestamp(timestamp, dt.UTC)
            rows.append((key.name, key.id, signed_at, signature.line))
            kept.append(key.name)
    if not rows:
        raise CosignatureRefused(
            403,
            "No cosignature by a witness this log knows (TILLIT_AUDIT_WITNESSES names them).",
        )
    await raw.execute(
        "INSERT INTO audit_cosignatures (tree_size, witness, key_id, signed_at, signature) "
        "SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::timestamptz[], $5::text[]) "
        "ON CONFLICT (tree_size, witness, key_id) DO UPDATE SET signed_at = excluded.signed_at, "
        "signature = excluded.signature, received_at = now() "
        "WHERE excluded.signed_at > audit_cosignatures.signed_at",
        head.size,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )
    return head, kept


# When the checkpoint of a size was signed (its first, if the size was signed again), and the
# database's clock now, in whole seconds since 1970.
_TIMES = (
    "SELECT (SELECT floor(extract(epoch FROM min(created_at))) FROM audit_checkpoints "
    "WHERE last_position = $1 AND note IS NOT NULL) AS signed, "
    "floor(extract(epoch FROM now())) AS now"
)


async def _past_keys(raw: Raw, origin: str) -> list[NoteKey]:
    rows = await raw.fetch("SELECT public_key FROM audit_keys ORDER BY first_checkpoint")
    return [NoteKey(origin, 0x01, bytes(r["public_key"])) for r in rows]


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


async def keys(raw: Raw, signer: Signer, witnesses: list[NoteKey]) -> dict[str, Any]:
    """Every key the log's checkpoints were signed with, oldest first, with when each was in
    force; the key in force now; and the witnesses whose cosignatures the log keeps."""
    rows = await raw.fetch(
        "SELECT k.key_id, k.public_key, k.first_checkpoint, k.first_used_at, "
        "(SELECT max(c.id) FROM audit_checkpoints c WHERE c.key_id = k.key_id) AS last_checkpoint "
        "FROM audit_keys k ORDER BY k.first_checkpoint"
    )
    listed: list[dict[str, Any]] = []
    for number, row in enumerate(rows):
        public = bytes(row["public_key"])
        following = rows[number + 1] if number + 1 < len(rows) else None
        listed.append(
            _key(
                signer.origin,
                row["key_id"],
                public,
                valid_from=row["first_used_at"],
                valid_until=following["first_used_at"] if following else None,
                checkpoints=(int(row["first_checkpoint"]), int(row["last_checkpoint"])),
                current=row["key_id"] == signer.key_id,
            )
        )
    if not any(k["current"] for k in listed):
        # Configured, not used yet: in force from the next checkpoint.
        listed.append(
            _key(
                signer.origin,
                signer.key_id,
                signer.verifier.raw,
                valid_from=None,
                valid_until=None,
                checkpoints=None,
                current=True,
            )
        )
    return {
        "origin": signer.origin,
        "keys": listed,
        "witnesses": [{"name": w.name, "vkey": w.vkey} for w in witnesses],
    }


def _key(
    origin: str,
    key_id: str,
    public: bytes,
    *,
    valid_from: dt.datetime | None,
    valid_until: dt.datetime | None,
    checkpoints: tuple[int, int] | None,
    current: bool,
) -> dict[str, Any]:
    note_key = NoteKey(origin, 0x01, public)
    return {
        "keyId": key_id,
        "algorithm": "Ed25519",
        "publicKey": base64.b64encode(public).decode(),
        "vkey": note_key.vkey,
        "noteKeyId": note_key.id.hex(),
        "validFrom": _iso(valid_from),
        "validUntil": _iso(valid_until),
        "firstCheckpoint": checkpoints[0] if checkpoints else None,
        "lastCheckpoint": checkpoints[1] if checkpoints else None,
        "current": current,
    }


@dataclass(frozen=True, slots=True)
class EventSeal:
    """Where an event sits in the log's tree, and the proof that it is in the signed tree of
    `tree_size` events. `leaf` is the bytes its leaf hash covers (None when they would name
    someone the reader may not see)."""

    position: int
    tree_size: int
    leaf_hash: bytes
    leaf: str | None
    proof: list[bytes]


async def with_seals(
    raw: Raw, entries: Sequence[LogEntry], tree_size: int, *, reader: Any
) -> list[LogEntry]:
    """The entries with their seals in the signed tree of `tree_size` events (entries sealed
    later, or not yet, have none): one query for the seals, one for the tiles.

    `reader` is the member reading: an event by another member's token (refused, but recorded)
    keeps its leaf to itself, since the leaf names that member."""
    if tree_size < 1 or await checkpoint_note(raw, tree_size) is None:
        # Only a size the log signed: a proof into a tree nobody signed proves nothing.
        latest = await latest_size(raw)
        raise BadUserInput(
            f"`proofsAt` is the size of a published checkpoint (GET /audit/checkpoint?size=N; "
            f"the newest is {latest or 0}); no checkpoint was signed at {tree_size}.",
            argument="proofsAt",
        )
    if len(entries) > MAX_PROOFS:
        raise BadUserInput(f"At most {MAX_PROOFS} entries with proofs.", argument="first")
    ids = [e.id for e in entries]
    seals = {
        int(r["event_id"]): (int(r["position"]), bytes(r["event_hash"]))
        for r in await raw.fetch(
            "SELECT event_id, position, event_hash FROM audit_seals "
            "WHERE event_id = ANY($1::bigint[]) AND position <= $2",
            ids,
            tree_size,
        )
    }
    if not seals:
        return list(entries)
    ordered = sorted(seals.items())
    proofs = dict(
        zip(
            (event_id for event_id, _ in ordered),
            await inclusion_proofs(raw, [pos - 1 for _, (pos, _) in ordered], tree_size),
            strict=True,
        )
    )
    sealed = []
    for entry in entries:
        found = seals.get(entry.id)
        if found is None:
            sealed.append(entry)
            continue
        position, leaf_hash = found
        names_another = entry.actor_member_id not in (None, reader)
        row = {name: getattr(entry, name) for name in EVENT_COLUMNS}
        leaf = None if names_another else canonical_event(row).decode()
        seal = EventSeal(position, tree_size, leaf_hash, leaf, proofs[entry.id])
        sealed.append(dataclasses.replace(entry, seal=seal))
    return sealed
