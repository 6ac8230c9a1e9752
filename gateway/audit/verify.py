"""Verifying the audit trail: recompute every event hash, every Merkle root, every checkpoint hash
and signature, and the chain between checkpoints, and say where the first mismatch is."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.sealing import (
    EVENT_COLUMNS,
    GENESIS,
    Checkpoint,
    all_checkpoints,
    event_hash,
    merkle_root,
)
from gateway.audit.tiles import read_tiles, tree_size
from gateway.audit.tree import Edge, TileId
from gateway.notes import NoteError, NoteKey, open_checkpoint
from gateway.signing import Verifier
from gateway.store.db import raw_of

# Full tiles compared with the stored ones per round trip.
_TILE_BATCH = 500


@dataclass
class VerifyReport:
    ok: bool = True
    checkpoints: int = 0
    events: int = 0
    dropped: int = 0
    unsealed: int = 0
    # Seconds between the newest checkpoint and the database's clock (None for an export): the
    # sealer writes one every interval even when nothing happened, so an old one means no
    # sealer is running.
    newest_age: float | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> VerifyReport:
        self.ok = False
        self.problems.append(problem)
        return self


def _check_checkpoint(
    checkpoint: Checkpoint,
    expected_id: int,
    previous: Checkpoint | None,
    keys: dict[str, Verifier],
) -> str | None:
    if checkpoint.id != expected_id:
        return (
            f"checkpoint {expected_id} is missing: the chain goes from "
            f"{expected_id - 1} to {checkpoint.id}"
        )
    expected_previous = previous.checkpoint_hash if previous else GENESIS
    if checkpoint.previous_hash != expected_previous:
        return f"checkpoint {checkpoint.id} does not follow checkpoint {expected_id - 1}"
    expected_first = previous.last_position + 1 if previous else 1
    if checkpoint.first_position != expected_first:
        return (
            f"checkpoint {checkpoint.id} starts at position {checkpoint.first_position}, "
            f"not {expected_first}"
        )
    if hashlib.sha256(checkpoint.canonical()).digest() != checkpoint.checkpoint_hash:
        return f"checkpoint {checkpoint.id} was altered (its hash does not match its content)"
    verifier = keys.get(checkpoint.key_id)
    if verifier is None:
        return (
            f"checkpoint {checkpoint.id} is signed by key {checkpoint.key_id}, which is not "
            "trusted here (after a key rotation, list every key in TILLIT_AUDIT_VERIFY_KEY; "
            "`tillit audit keys` shows the keys the log was signed with)"
        )
    if not verifier.verify(checkpoint.signature, checkpoint.checkpoint_hash):
        return f"checkpoint {checkpoint.id} has no valid signature under key {verifier.key_id}"
    return None


def _check_note(checkpoint: Checkpoint, tree: Edge, verifier: Verifier) -> str | None:
    """The checkpoint's signed note commits to the tree recomputed from the seals."""
    if checkpoint.note is None or checkpoint.tree_root is None:
        return None
    try:
        head = open_checkpoint(checkpoint.note, [NoteKey.of_log(_origin(checkpoint), verifier)])[0]
    except NoteError as exc:
        return f"checkpoint {checkpoint.id}'s signed note does not verify: {exc}"
    if head.size != checkpoint.last_position or tree.size != checkpoint.last_position:
        return f"checkpoint {checkpoint.id}'s signed note is not for tree size {tree.size}"
    if head.root != checkpoint.tree_root or head.root != tree.root():
        return (
            f"checkpoint {checkpoint.id}'s tree root differs from the tree of the seals "
            "(a seal was altered, removed or reordered)"
        )
    return None


def _origin(checkpoint: Checkpoint) -> str:
    assert checkpoint.note is not None
    return checkpoint.note.split("\n", 1)[0]


class _TileCheck:
    """Compares the tiles the recomputed tree fills with the stored ones, a batch at a time."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.pending: dict[TileId, bytes] = {}

    def full(self, tile: TileId, data: bytes) -> None:
        self.pending[tile] = data

    async def compare(self, expected: dict[TileId, bytes] | None = None) -> str | None:
        expected = expected if expected is not None else self.pending
        stored = await read_tiles(await raw_of(self.connection), expected)
        for tile, data in sorted(expected.items()):
            if stored.get(tile) != data:
                return f"tile {tile[0]}/{tile[1]} of the tree differs from the seals"
        if expected is self.pending:
            self.pending = {}
        return None

    async def flush_if_full(self) -> str | None:
        return await self.compare() if len(self.pending) >= _TILE_BATCH else None


async def _sealed_events(
    connection: AsyncConnection, first: int, last: int
) -> AsyncIterator[dict[str, Any]]:
    columns = ", ".join(f"e.{c}" for c in EVENT_COLUMNS)
    result = await connection.stream(
        text(
            f"SELECT s.position, s.event_id, s.occurred_at AS sealed_at, s.event_hash, "  # noqa: S608  # constant columns
            f"s.checkpoint_id, e.id IS NOT NULL AS present, e.txid::text AS txid, {columns} "
            "FROM audit_seals s LEFT JOIN access_events e ON e.id = s.event_id "
            "WHERE s.position BETWEEN :first AND :last ORDER BY s.position"
        ),
        {"first": first, "last": last},
    )
    async for row in result:
        yield dict(row._mapping)


async def verify_log(
    connection: AsyncConnection, verifiers: Verifier | list[Verifier]
) -> VerifyReport:
    """Check the whole trail. Stops at the first problem and names it.

    `verifiers`: the keys trusted; each checkpoint must be signed by the one its key id names."""
    report = VerifyReport()
    keys = {v.key_id: v for v in ([verifiers] if isinstance(verifiers, Verifier) else verifiers)}
    checkpoints = await all_checkpoints(connection)
    if not checkpoints:
        return report.fail("no checkpoints yet: nothing has been sealed, nothing can be verified")
    previous: Checkpoint | None = None
    dropped_before: dt.datetime | None = None
    # First the chain: ids, links, hashes, signatures; and what retention dropped.
    for expected_id, checkpoint in enumerate(checkpoints, start=1):
        problem = _check_checkpoint(checkpoint, expected_id, previous, keys)
        if problem:
            return report.fail(problem)
        report.checkpoints += 1
        previous = checkpoint
        if checkpoint.kind == "RETENTION":
            cutoff = dt.datetime.fromisoformat(str(checkpoint.details["dropped_before"]))
            dropped_before = max(dropped_before, cutoff) if dropped_before else cutoff
    # Then every sealed batch against its events, and the tree over all of them.
    tiles = _TileCheck(connection)
    tree = Edge(on_full=tiles.full)
    for checkpoint in checkpoints:
        if checkpoint.kind != "SEAL":
            problem = _check_note(checkpoint, tree, keys[checkpoint.key_id])
            if problem:
                return report.fail(problem)
            continue
        leaves: list[bytes] = []
        expected_position = checkpoint.first_position
        order: tuple[int, int] | None = None
        async for row in _sealed_events(
            connection, checkpoint.first_position, checkpoint.last_position
        ):
            position = row["position"]
            if position != expected_position:
                return report.fail(
                    f"position {expected_position} is missing from checkpoint {checkpoint.id}"
                )
            expected_position += 1
            if row["checkpoint_id"] != checkpoint.id:
                return report.fail(
                    f"the seal at position {position} names checkpoint {row['checkpoint_id']}, "
                    f"not {checkpoint.id}"
                )
            leaves.append(row["event_hash"])
            if not row["present"]:
                if dropped_before is not None and row["sealed_at"] < dropped_before:
                    report.dropped += 1
                    continue
                return report.fail(
                    f"event {row['event_id']} at position {position} is missing "
                    f"(checkpoint {checkpoint.id})"
                )
            # The sealer seals in (transaction, id) order: a step back means the seals moved.
            current = (int(row["txid"]), int(row["id"]))
            if order is not None and current < order:
                return report.fail(
                    f"event {row['event_id']} at position {position} is out of order "
                    f"(seals reordered in checkpoint {checkpoint.id})"
                )
            order = current
            if event_hash(row) != row["event_hash"]:
                return report.fail(
                    f"event {row['event_id']} at position {position} was altered or moved "
                    f"(checkpoint {checkpoint.id})"
                )
            report.events += 1
        if expected_position != checkpoint.last_position + 1:
            return report.fail(
                f"position {expected_position} is missing from checkpoint {checkpoint.id}"
            )
        if merkle_root(leaves) != checkpoint.batch_root:
            return report.fail(
                f"the seals of checkpoint {checkpoint.id} no longer match it "
                "(a seal was altered, removed or reordered)"
            )
        tree.extend(leaves)
        problem = _check_note(checkpoint, tree, keys[checkpoint.key_id]) or (
            await tiles.flush_if_full()
        )
        if problem:
            return report.fail(problem)
    problem = await _check_tiles(connection, tree, tiles)
    if problem:
        return report.fail(problem)
    assert previous is not None
    stray = (
        await connection.execute(
            text(
                "SELECT e.id FROM access_events e LEFT JOIN audit_seals s ON s.event_id = e.id "
                "WHERE s.event_id IS NULL AND e.txid < CAST(:horizon AS xid8) "
                "ORDER BY e.id LIMIT 1"
            ),
            {"horizon": previous.horizon},
        )
    ).scalar()
    if stray is not None:
        return report.fail(
            f"event {stray} is not in any checkpoint although it is older than the last "
            f"(inserted afterwards?)"
        )
    report.unsealed = int(
        await connection.scalar(
            text("SELECT count(*) FROM access_events WHERE txid >= CAST(:horizon AS xid8)"),
            {"horizon": previous.horizon},
        )
        or 0
    )
    now = await connection.scalar(text("SELECT now()"))
    report.newest_age = max(0.0, (now - checkpoints[-1].created_at).total_seconds())
    return report


async def _check_tiles(connection: AsyncConnection, tree: Edge, tiles: _TileCheck) -> str | None:
    """The stored tiles are the recomputed tree's, and hold nothing beyond it."""
    problem = await tiles.compare()
    if problem:
        return problem
    growing = {tile: b"".join(tree.levels[tile[0]]) for tile, _ in Edge.shape(tree.size)}
    problem = await tiles.compare(growing)
    if problem:
        return problem
    stored = await tree_size(await raw_of(connection))
    if stored != tree.size and any(tree.levels):
        return f"the tree's tiles hold {stored} leaves, the seals {tree.size}"
    return None


def manifest_content(manifest: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return (
        b"tillit-export-manifest-v1\n"
        + json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    )


def verify_export(
    path: Path, manifest_path: Path, verifiers: Verifier | list[Verifier]
) -> VerifyReport:
    """Check an export file against its signed manifest: signature, size, row count, SHA-256."""
    report = VerifyReport()
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        signature = bytes.fromhex(manifest["signature"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return report.fail(f"{manifest_path}: not a Tillit export manifest")
    trusted = [verifiers] if isinstance(verifiers, Verifier) else verifiers
    verifier = next((v for v in trusted if v.key_id == manifest.get("key_id")), trusted[0])
    if not verifier.verify(signature, manifest_content(manifest)):
        return report.fail(f"{manifest_path}: the signature does not match the manifest")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != manifest.get("sha256"):
        return report.fail(f"{path}: its SHA-256 differs from the manifest's (the file changed)")
    with path.open(encoding="utf-8", newline="") as handle:
        if manifest.get("format") == "csv":
            rows = sum(1 for _ in csv.reader(handle)) - 1
        else:
            rows = sum(1 for line in handle if line.strip())
    if rows != manifest.get("rows"):
        return report.fail(f"{path}: {rows} rows, the manifest says {manifest.get('rows')}")
    report.events = rows
    return report
