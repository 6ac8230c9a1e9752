"""The log's one Merkle tree, as RFC 6962 (and RFC 9162, section 2.1) defines it: hashes, its
right edge as the sealer extends it, and inclusion and consistency proofs.

Leaves are the sealed events in position order (leaf index = position - 1), each leaf hash
SHA-256(0x00 || the event's canonical JSON). Interior nodes are SHA-256(0x01 || left || right).

The tree is stored as tiles, as C2SP tlog-tiles lays them out: a tile at level L, index N holds up
to 256 hashes, entry j being the hash of the complete subtree of 2^(8L) leaves numbered
256N + j at that height. Level 0 tiles hold the leaf hashes; a full tile's root is an entry of
the tile above. A tile is stored as soon as it has an entry and grows until it is full, so any
complete subtree of the tree at its current size can be read from one tile (a subtree of 2^(8L+r)
leaves, r < 8, is the root of 2^r neighbouring entries of a level-L tile).

Nothing here touches the database: gateway/audit/tiles.py stores and reads tiles.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# A complete subtree: (height, index). It covers leaves [index << height, (index + 1) << height).
Node = tuple[int, int]
# A stored tile: (level, index).
TileId = tuple[int, int]


class ProofError(ValueError):
    """A proof asked of sizes or positions the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over leaf hashes, in order.

    Bottom-up: pair neighbours level by level and carry a level's odd last node up unchanged,
    which is the same tree as RFC 6962's split at the largest power of two below the count
    (tests compare the two), without the recursion's copies of the list.
    """
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    sha256 = hashlib.sha256
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): where RFC 6962 splits a tree of n."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(subtrees: Sequence[bytes]) -> bytes:
    """The hash of consecutive complete subtrees of decreasing size (a range's decomposition)."""
    value = subtrees[-1]
    for left in reversed(subtrees[:-1]):
        value = node_hash(left, value)
    return value


def range_nodes(start: int, end: int) -> list[Node]:
    """The complete subtrees that make up leaves [start, end), largest first.

    Valid for the ranges RFC 6962's recursion visits (start aligned to the largest power of two
    not above end - start), which are the only ones proofs need."""
    nodes: list[Node] = []
    while start < end:
        size = end - start
        height = size.bit_length() - 1
        if size & (size - 1) == 0:
            nodes.append((height, start >> height))
            break
        part = _split(size)
        height = part.bit_length() - 1
        nodes.append((height, start >> height))
        start += part
    return nodes


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 9162 PATH(m, D[n]): the leaf ranges whose hashes prove leaf `index` in a tree of
    `size` leaves, from the leaf's sibling up."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    path: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
    path.reverse()
    return path


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """RFC 9162 PROOF(m, D[n]): the leaf ranges whose hashes prove that the tree of `old` leaves
    is a prefix of the tree of `new` leaves."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from {old} to {new}")
    if old == new:
        return []
    proof: list[tuple[int, int]] = []
    start, end, m, complete = 0, new, old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append((start + k, end))
            end = start + k
        else:
            proof.append((start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:
        proof.append((start, end))
    proof.reverse()
    return proof


def tile_of(node: Node) -> tuple[TileId, int, int]:
    """Where a complete subtree's hash comes from: the tile, and the first and count of its
    entries whose root it is."""
    height, index = node
    level, rest = divmod(height, TILE_HEIGHT)
    first = index << rest
    return (level, first >> TILE_HEIGHT), first & (TILE_WIDTH - 1), 1 << rest


def node_tiles(nodes: Iterable[Node]) -> set[TileId]:
    return {tile_of(node)[0] for node in nodes}


def hash_node(node: Node, tiles: Mapping[TileId, bytes]) -> bytes:
    """A complete subtree's hash from the tiles that hold it (KeyError when one is missing,
    ProofError when it holds too few entries: the tiles are behind the tree)."""
    tile, first, count = tile_of(node)
    data = tiles[tile]
    begin, stop = first * HASH_SIZE, (first + count) * HASH_SIZE
    if len(data) < stop:
        raise ProofError(f"tile {tile} holds {len(data) // HASH_SIZE} hashes, not {first + count}")
    entries = [data[i : i + HASH_SIZE] for i in range(begin, stop, HASH_SIZE)]
    return merkle_root(entries)


def hash_range(start: int, end: int, node: Callable[[Node], bytes]) -> bytes:
    return _fold([node(n) for n in range_nodes(start, end)])


def ranges_tiles(ranges: Iterable[tuple[int, int]]) -> set[TileId]:
    return node_tiles(n for start, end in ranges for n in range_nodes(start, end))


def inclusion_tiles(indexes: Iterable[int], size: int) -> set[TileId]:
    """The tiles the inclusion proofs of leaves `indexes` in the tree of `size` read."""
    return ranges_tiles(r for index in indexes for r in inclusion_ranges(index, size))


def inclusion_from_tiles(
    indexes: Sequence[int], size: int, tiles: Mapping[TileId, bytes]
) -> list[list[bytes]]:
    """RFC 9162 inclusion proofs of leaves `indexes` in the tree of `size`, from tiles holding
    at least that tree (KeyError when a tile is missing): the log computes them so from its
    stored tiles, a client from the tiles it fetched."""
    return [
        [hash_range(a, b, lambda n: hash_node(n, tiles)) for a, b in inclusion_ranges(i, size)]
        for i in indexes
    ]


def consistency_from_tiles(old: int, new: int, tiles: Mapping[TileId, bytes]) -> list[bytes]:
    """RFC 9162 consistency proof from the tree of `old` to that of `new`, from tiles."""
    ranges = consistency_ranges(old, new)
    return [hash_range(a, b, lambda n: hash_node(n, tiles)) for a, b in ranges]


# -- C2SP tlog-tiles paths: tile/<L>/<N>[.p/<W>] --------------------------------------------------

MAX_TILE_LEVEL = 63
_TILE_PATH = re.compile(r"(0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?")


def tile_width(tile: TileId, size: int) -> int:
    """How many entries tile `tile` has in the tree of `size` leaves (256 when it is full)."""
    level, index = tile
    return max(0, min(TILE_WIDTH, (size >> (TILE_HEIGHT * level)) - index * TILE_WIDTH))


def tile_path(tile: TileId, width: int = TILE_WIDTH) -> str:
    """`<L>/<N>[.p/<W>]` as tlog-tiles spells it: N in zero-padded groups of three digits, each
    but the last prefixed with `x` (1234067 is x001/x234/067); `.p/<W>` for a partial tile."""
    level, index = tile
    digits = f"{index:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    path = f"{level}/" + "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def parse_tile_path(path: str) -> tuple[TileId, int] | None:
    """The tile and width a `<L>/<N>[.p/<W>]` path names, or None unless it is spelled exactly
    as tile_path spells it (one path per tile, so that caches hold one copy)."""
    found = _TILE_PATH.fullmatch(path)
    if found is None or found.group(2).count("/") > 6:  # N below 2^63: at most 7 groups
        return None
    level = int(found.group(1))
    index = int(found.group(2).replace("x", "").replace("/", ""))
    width = int(found.group(3)) if found.group(3) else TILE_WIDTH
    if level > MAX_TILE_LEVEL or width > TILE_WIDTH or index >= 1 << 63:
        return None
    tile = (level, index)
    if tile_path(tile, width) != path:
        return None
    return tile, width


# -- the right edge ---------------------------------------------------------------------------


@dataclass
class Edge:
    """The tree's right edge: its size and, per tile level, the entries of the tile still
    growing (empty when the level's last tile is full). Enough to append leaves and compute the
    root; the tiles it changes are collected for the caller to store."""

    size: int = 0
    levels: list[list[bytes]] = field(default_factory=list)
    # Called with every tile as it becomes full (verification compares them with the stored).
    on_full: Callable[[TileId, bytes], None] | None = None
    # Tiles filled, and growing tiles touched, since the last `take_changed`.
    _filled: dict[TileId, bytes] = field(default_factory=dict)
    _touched: set[TileId] = field(default_factory=set)

    @staticmethod
    def shape(size: int) -> list[tuple[TileId, int]]:
        """The growing tile of each level at `size` and how many entries it holds (levels whose
        last tile is full are left out)."""
        shape = []
        level = 0
        while size >> (TILE_HEIGHT * level):
            count = size >> (TILE_HEIGHT * level)
            width = count & (TILE_WIDTH - 1)
            if width:
                shape.append(((level, count >> TILE_HEIGHT), width))
            level += 1
        return shape

    @classmethod
    def load(cls, size: int, tiles: Mapping[TileId, bytes]) -> Edge:
        """The edge at `size` from its growing tiles (each must hold exactly its width)."""
        edge = cls(size=size)
        for (level, index), width in cls.shape(size):
            data = tiles.get((level, index))
            if data is None or len(data) != width * HASH_SIZE:
                held = "none" if data is None else str(len(data) // HASH_SIZE)
                raise ProofError(f"tile {level}/{index} holds {held} hashes, not {width}")
            while len(edge.levels) <= level:
                edge.levels.append([])
            edge.levels[level] = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return edge

    def append(self, leaf: bytes) -> None:
        self.size += 1
        value, level = leaf, 0
        while True:
            if len(self.levels) <= level:
                self.levels.append([])
            entries = self.levels[level]
            entries.append(value)
            tile = (level, ((self.size >> (TILE_HEIGHT * level)) - 1) >> TILE_HEIGHT)
            if len(entries) < TILE_WIDTH:
                self._touched.add(tile)
                return
            data = b"".join(entries)
            self._filled[tile] = data
            self._touched.discard(tile)
            if self.on_full is not None:
                self.on_full(tile, data)
            value = merkle_root(entries)
            self.levels[level] = []
            level += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def take_changed(self) -> dict[TileId, bytes]:
        """The tiles changed since the last call, with their whole contents."""
        changed = dict(self._filled)
        for level, index in self._touched:
            changed[(level, index)] = b"".join(self.levels[level])
        self._filled, self._touched = {}, set()
        return changed

    def subtrees(self) -> list[bytes]:
        """The hashes of the complete subtrees the tree is made of, largest first."""
        hashes: list[bytes] = []
        for level in range(len(self.levels) - 1, -1, -1):
            entries = self.levels[level]
            offset = 0
            for bit in range(TILE_HEIGHT - 1, -1, -1):
                if len(entries) & (1 << bit):
                    hashes.append(merkle_root(entries[offset : offset + (1 << bit)]))
                    offset += 1 << bit
        return hashes

    def root(self) -> bytes:
        subtrees = self.subtrees()
        return _fold(subtrees) if subtrees else EMPTY_ROOT


# -- verifying proofs (for clients: the witness, `verify --remote`) ---------------------------


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root a leaf and its inclusion proof lead to."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    fn, sn, value = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise ProofError("the proof is too long")
        if fn & 1 or fn == sn:
            value = node_hash(sibling, value)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            value = node_hash(value, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is too short")
    return value


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if not 0 < old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first subtree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
