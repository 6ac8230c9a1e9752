"""Checking a Tillit log from outside, with nothing but what it publishes over HTTP: a witness that
cosigns checkpoints it has seen grow append-only, and the verification of an export against the
signed tree. No database access, no trust in the gateway beyond the keys pinned.

Used by `tillit audit witness` and `tillit audit verify --remote`.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.audit.tree import (
    HASH_SIZE,
    ProofError,
    TileId,
    inclusion_from_tiles,
    inclusion_tiles,
    leaf_hash,
    root_from_inclusion,
    tile_path,
    tile_width,
    verify_consistency,
)
from gateway.audit.verify import VerifyReport, verify_export
from gateway.notes import ED25519, Note, NoteError, NoteKey, TreeHead, WitnessKey, open_checkpoint
from gateway.signing import Verifier

PROOF_BATCH = 256
TIMEOUT_SECONDS = 10.0
# Tiles a client keeps (8 KB each): an export is checked in position order, so the tiles one
# batch's proofs read are mostly the next batch's too.
TILE_CACHE = 64
RATE_LIMITED_TRIES = 30


class Refused(Exception):
    """The log showed something a witness must not cosign, or a verifier must not accept."""


class Unreachable(Exception):
    """The log could not be asked (network, HTTP error); nothing was decided."""


class LogClient:
    """The published endpoints of one Tillit gateway."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._tiles: dict[tuple[TileId, int], bytes] = {}

    @classmethod
    def at(cls, url: str) -> LogClient:
        return cls(httpx.AsyncClient(base_url=url.rstrip("/"), timeout=TIMEOUT_SECONDS))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, params: Any = None) -> httpx.Response:
        for _ in range(RATE_LIMITED_TRIES):
            try:
                response = await self.http.get(path, params=params)
            except httpx.HTTPError as exc:
                raise Unreachable(f"GET {path}: {type(exc).__name__}") from None
            if response.status_code != 429:
                break
            # The public routes' rate per address: wait as the log asks, a bounded number of times.
            await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 10.0))
        if response.status_code != 200:
            raise Unreachable(f"GET {path}: HTTP {response.status_code}: {_message(response)}")
        return response

    async def keys(self) -> list[NoteKey]:
        listed = (await self._get("/audit/keys")).json()
        return [NoteKey.parse(k["vkey"]) for k in listed["keys"]]

    async def checkpoint(self, size: int | None = None) -> str:
        return (await self._get("/audit/checkpoint", {"size": size} if size else None)).text

    async def consistency(self, old: int, new: int) -> list[bytes]:
        body = (await self._get("/audit/proof/consistency", {"from": old, "to": new})).json()
        return [base64.b64decode(h) for h in body["hashes"]]

    async def tiles(self, wanted: Iterable[TileId], size: int) -> dict[TileId, bytes]:
        """The hash tiles `wanted` as the tree of `size` holds them (C2SP tlog-tiles: a partial
        tile at the tree's right edge), each fetched once while it is among the last used."""
        found: dict[TileId, bytes] = {}
        for tile in sorted(set(wanted)):
            key = (tile, tile_width(tile, size))
            data = self._tiles.pop(key, None)
            if data is None:
                data = (await self._get(f"/audit/tile/{tile_path(*key)}")).content
                if len(data) != key[1] * HASH_SIZE:
                    raise Unreachable(f"tile {tile_path(*key)} has {len(data)} bytes")
            self._tiles[key] = data  # now the most recently used
            if len(self._tiles) > TILE_CACHE:
                del self._tiles[next(iter(self._tiles))]
            found[tile] = data
        return found

    async def inclusion(self, size: int, positions: list[int]) -> dict[int, list[bytes]]:
        """RFC 9162 inclusion proofs of `positions` in the tree of `size`, computed here from the
        log's tiles: the log is asked for static, cacheable data, never to compute."""
        indexes = [p - 1 for p in positions]
        tiles = await self.tiles(inclusion_tiles(indexes, size), size)
        try:
            proofs = inclusion_from_tiles(indexes, size, tiles)
        except (KeyError, ProofError) as exc:
            raise Unreachable(f"the log's tiles do not cover a tree of {size}: {exc}") from None
        return dict(zip(positions, proofs, strict=True))

    async def post_cosignature(self, note: str) -> dict[str, Any]:
        try:
            response = await self.http.post(
                "/audit/cosignature",
                content=note.encode(),
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
        except httpx.HTTPError as exc:
            raise Unreachable(f"POST /audit/cosignature: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise Unreachable(
                f"the log did not take the cosignature: HTTP {response.status_code}: "
                f"{_message(response)}"
            )
        result: dict[str, Any] = response.json()
        return result


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["errors"][0]["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return response.text[:200]


# -- the witness -------------------------------------------------------------------------------


@dataclass
class WitnessState:
    """What a witness last cosigned, and the log keys it trusts (pinned at its first run)."""

    origin: str
    log_keys: list[str]
    size: int
    root: bytes
    note: str
    cosigned_at: int

    @classmethod
    def load(cls, path: Path) -> WitnessState | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                origin=data["origin"],
                log_keys=list(data["log_keys"]),
                size=int(data["size"]),
                root=base64.b64decode(data["root"]),
                note=data["note"],
                cosigned_at=int(data["cosigned_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Refused(f"{path} is not a witness state file ({type(exc).__name__})") from None

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the old state or the new, never half of one."""
        data = {
            "origin": self.origin,
            "log_keys": self.log_keys,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "note": self.note,
            "cosigned_at": self.cosigned_at,
        }
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        partial.replace(path)


@dataclass
class Witnessed:
    head: TreeHead
    previous_size: int | None
    accepted: list[str]
    pinned: list[str] = field(default_factory=list)


async def witness_once(
    log: LogClient,
    key: WitnessKey,
    state_path: Path,
    *,
    log_keys: list[NoteKey] | None = None,
    now: int | None = None,
) -> Witnessed:
    """Fetch the newest checkpoint, check it grew append-only from the last one cosigned, cosign
    it, remember it, and hand the cosignature to the log. Raises Refused (the log forked, rolled
    back, or signed with an unknown key: nothing is cosigned, the state is unchanged) or
    Unreachable."""
    state = WitnessState.load(state_path)
    pinned_now: list[str] = []
    trusted = list(log_keys or [])
    if state is not None:
        trusted += [NoteKey.parse(v) for v in state.log_keys]
    elif not trusted:
        # First run without --log-key: trust the keys the log publishes now (pinned from here on).
        trusted = await log.keys()
        pinned_now = [k.vkey for k in trusted]
    note_text = await log.checkpoint()
    try:
        head, note, _ = open_checkpoint(note_text, trusted)
    except NoteError as exc:
        raise Refused(
            f"the log's checkpoint is not signed by a key this witness trusts ({exc}); after a "
            "key rotation, add the new key with --log-key"
        ) from None
    if state is not None:
        await _check_growth(log, state, head)
    timestamp = int(time.time()) if now is None else now
    cosignature = key.cosign(note.text, timestamp)
    # The log's signature and this witness's only (the others' cosignatures are theirs to send).
    signed_by_log = [s for k in trusted for s in note.by(k)]
    cosigned = Note(note.text, (*signed_by_log, cosignature)).render()
    vkeys = sorted({k.vkey for k in trusted if k.kind == ED25519})
    WitnessState(head.origin, vkeys, head.size, head.root, cosigned, timestamp).save(state_path)
    result = await log.post_cosignature(cosigned)
    return Witnessed(
        head=head,
        previous_size=None if state is None else state.size,
        accepted=list(result.get("accepted", [])),
        pinned=pinned_now,
    )


async def _check_growth(log: LogClient, state: WitnessState, head: TreeHead) -> None:
    if head.origin != state.origin:
        raise Refused(
            f"the checkpoint is of log {head.origin!r}, this witness watches {state.origin!r}"
        )
    if head.size < state.size:
        raise Refused(
            f"rollback: the log now shows a tree of {head.size} events; this witness cosigned "
            f"{state.size} before. A log never shrinks."
        )
    if head.size == state.size:
        if head.root != state.root:
            raise Refused(
                f"fork: the log shows two different trees of {head.size} events (root "
                f"{_b64(head.root)} now, {_b64(state.root)} cosigned before)"
            )
        return
    if state.size == 0:
        return
    proof = await log.consistency(state.size, head.size)
    if not verify_consistency(state.size, head.size, state.root, head.root, proof):
        raise Refused(
            f"fork: the tree of {head.size} events does not extend the tree of {state.size} "
            "this witness cosigned (the consistency proof fails)"
        )


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# -- verifying an export from published information ------------------------------------------


@dataclass
class RemoteReport:
    report: VerifyReport
    tree_size: int = 0
    key: str = ""
    cosigners: list[str] = field(default_factory=list)
    recomputed: int = 0


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, bytes, bytes | None]]:
    """(position, event hash as exported, leaf hash recomputed from the row's fields or None)."""
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for row in csv.DictReader(handle):
                yield int(row["position"]), bytes.fromhex(row["event_hash"]), None
            return
        for line in handle:
            if not line.strip():
                continue
            document = json.loads(line)
            position = int(document.pop("position"))
            exported = bytes.fromhex(document.pop("event_hash"))
            canonical = json.dumps(
                document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            yield position, exported, leaf_hash(canonical)


async def verify_remote(
    log: LogClient, export: Path, manifest_path: Path, *, log_keys: list[NoteKey] | None = None
) -> RemoteReport:
    """Check an export with its manifest against the log's published keys and signed tree: the
    manifest's signature, the file's hash and row count, each row's hash (recomputed from its
    fields for JSON Lines), and each row's inclusion in the newest signed checkpoint."""
    keys = log_keys or await log.keys()
    verifiers = [Verifier.from_base64(_b64(k.public)) for k in keys if k.kind == ED25519]
    result = RemoteReport(verify_export(export, manifest_path, verifiers))
    report = result.report
    if not report.ok:
        return result
    # A command's one small read; nothing else runs on this loop.
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))  # noqa: ASYNC240
    try:
        head, note, signer = open_checkpoint(await log.checkpoint(), keys)
    except NoteError as exc:
        report.fail(f"the log's newest checkpoint does not verify: {exc}")
        return result
    result.tree_size, result.key = head.size, signer.vkey
    result.cosigners = sorted({s.name for s in note.signatures if s.name != head.origin})
    covered = int(manifest["checkpoint"]["last_position"])
    if covered > head.size:
        report.fail(f"the export covers {covered} events, the log's signed tree only {head.size}")
        return result
    batch: dict[int, bytes] = {}
    for position, exported, recomputed in _rows(export, manifest.get("format", "csv")):
        if recomputed is not None:
            if recomputed != exported:
                report.fail(f"the event at position {position} does not hash to its event_hash")
                return result
            result.recomputed += 1
        if not 1 <= position <= covered:
            report.fail(f"position {position} is outside the export's checkpoint")
            return result
        batch[position] = exported
        if len(batch) == PROOF_BATCH:
            if problem := await _check_batch(log, head, batch):
                report.fail(problem)
                return result
            batch = {}
    if batch and (problem := await _check_batch(log, head, batch)):
        report.fail(problem)
    return result


async def _check_batch(log: LogClient, head: TreeHead, batch: dict[int, bytes]) -> str | None:
    proofs = await log.inclusion(head.size, sorted(batch))
    for position, leaf in batch.items():
        try:
            root = root_from_inclusion(position - 1, head.size, leaf, proofs.get(position, []))
        except ProofError:
            root = b""
        if root != head.root:
            return (
                f"the event at position {position} is not in the log's signed tree of "
                f"{head.size} events (its inclusion proof fails)"
            )
    return None
