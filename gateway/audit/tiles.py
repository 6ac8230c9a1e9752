"""The log's Merkle tree in PostgreSQL: tiles (`audit_tiles`), extended by the sealer, read for
proofs. See gateway/audit/tree.py for the layout.

Tiles are derived data: every hash in them follows from the seals (`audit_seals.event_hash`, in
position order), which retention never drops, and `tillit audit verify` recomputes them. A tile
grows in place until it is full; the sealer changes them only in the transaction that writes the
seals and the checkpoint they belong to, so the tree's size is always the last checkpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.audit.tree import (
    Edge,
    ProofError,
    TileId,
    consistency_from_tiles,
    consistency_ranges,
    inclusion_from_tiles,
    inclusion_tiles,
    ranges_tiles,
)
from gateway.store.db import Raw

# Seals read per round trip while the tree catches up with them (after the upgrade that added the
# tree, the first seal builds it over every event sealed before).
CATCH_UP_ROWS = 50_000
# Most inclusion proofs one request may have (a member's `accessLog(proofsAt:)`, all fields
# together): each costs some 0.5 ms of CPU; the /me page asks for two lists of 50.
MAX_PROOFS = 100


async def tree_size(raw: Raw) -> int:
    """How many leaves the stored tiles hold: the last level-0 tile's index and width."""
    row = await raw.fetchrow(
        "SELECT index, length(hashes) / 32 AS width FROM audit_tiles "
        "WHERE level = 0 ORDER BY index DESC LIMIT 1"
    )
    return 0 if row is None else int(row["index"]) * 256 + int(row["width"])


async def read_tiles(raw: Raw, ids: Iterable[TileId]) -> dict[TileId, bytes]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await raw.fetch(
        "SELECT t.level, t.index, t.hashes FROM audit_tiles t "
        "JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, index) "
        "ON t.level = w.level AND t.index = w.index",
        [level for level, _ in wanted],
        [index for _, index in wanted],
    )
    return {(int(r["level"]), int(r["index"])): bytes(r["hashes"]) for r in rows}


async def load_edge(raw: Raw, size: int) -> Edge:
    shape = Edge.shape(size)
    return Edge.load(size, await read_tiles(raw, (tile for tile, _ in shape)))


async def store_tiles(raw: Raw, tiles: dict[TileId, bytes]) -> None:
    if not tiles:
        return
    ordered = sorted(tiles.items())
    await raw.execute(
        "INSERT INTO audit_tiles (level, index, hashes) "
        "SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[]) "
        "ON CONFLICT (level, index) DO UPDATE SET hashes = excluded.hashes",
        [level for (level, _), _ in ordered],
        [index for (_, index), _ in ordered],
        [data for _, data in ordered],
    )


async def edge_at(raw: Raw, size: int) -> Edge:
    """The tree's edge at `size` (the last checkpoint's), catching the tiles up from the seals
    when they are behind: after the upgrade that added the tree, or if tiles were lost."""
    stored = await tree_size(raw)
    if stored > size:
        raise ProofError(f"the tiles hold {stored} leaves, more than the {size} sealed")
    edge = await load_edge(raw, stored)
    while edge.size < size:
        rows = await raw.fetch(
            "SELECT event_hash FROM audit_seals WHERE position > $1 AND position <= $2 "
            "ORDER BY position",
            edge.size,
            min(size, edge.size + CATCH_UP_ROWS),
        )
        if not rows:
            raise ProofError(f"position {edge.size + 1} has no seal")
        edge.extend(bytes(r["event_hash"]) for r in rows)
        await store_tiles(raw, edge.take_changed())
    return edge


async def inclusion_proofs(raw: Raw, indexes: Sequence[int], size: int) -> list[list[bytes]]:
    """RFC 9162 inclusion proofs of leaves `indexes` in the tree of `size` (at most the stored
    tree's size), from one read of the tiles they need."""
    tiles = await read_tiles(raw, inclusion_tiles(indexes, size))
    try:
        return inclusion_from_tiles(indexes, size, tiles)
    except KeyError:
        raise ProofError(f"the tree has no tiles for size {size} yet") from None


async def consistency_proof(raw: Raw, old: int, new: int) -> list[bytes]:
    tiles = await read_tiles(raw, ranges_tiles(consistency_ranges(old, new)))
    try:
        return consistency_from_tiles(old, new, tiles)
    except KeyError:
        raise ProofError(f"the tree has no tiles for size {new} yet") from None
