"""A transparency-log verifier written from the texts of RFC 6962 (section 2.1) and C2SP
signed-note, tlog-checkpoint and tlog-cosignature, with hashlib, base64 and the Ed25519 of
`cryptography` only. Tests check what gateway serves with it; nothing of gateway's is used here."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1: MTH({}) = SHA-256(); MTH({d0}) = the leaf hash; else split at k, the largest
    power of two smaller than n. (`leaves` are leaf hashes already.)"""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root_from_path(m: int, n: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 6962 2.1.1: PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) for m < k, else
    PATH(m - k, D[k:n]) : MTH(D[0:k]); read backwards, the path rebuilds the root."""
    if n == 1:
        if path:
            raise ValueError("path too long")
        return leaf
    if not path:
        raise ValueError("path too short")
    k = largest_power_below(n)
    *rest, last = path
    if m < k:
        return sha256(b"\x01" + root_from_path(m, k, leaf, rest) + last)
    return sha256(b"\x01" + last + root_from_path(m - k, n - k, leaf, rest))


def included(m: int, n: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    if not 0 <= m < n:
        return False
    try:
        return root_from_path(m, n, leaf, path) == root
    except ValueError:
        return False


def consistent(m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 6962 2.1.2: PROOF(m, D[n]) = SUBPROOF(m, D[n], true); rebuild both roots from it."""
    if not 0 < m <= n:
        return False
    if m == n:
        return not proof and old_root == new_root
    remaining = list(proof)

    def sub(m: int, n: int, whole: bool) -> tuple[bytes, bytes]:
        if m == n:
            if whole:
                return old_root, old_root
            node = remaining.pop()
            return node, node
        k = largest_power_below(n)
        right = remaining.pop()
        if m <= k:
            old, new = sub(m, k, whole)
            return old, sha256(b"\x01" + new + right)
        old, new = sub(m - k, n - k, False)
        return sha256(b"\x01" + right + old), sha256(b"\x01" + right + new)

    try:
        old, new = sub(m, n, True)
    except IndexError:
        return False
    return not remaining and old == old_root and new == new_root


def consistency_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.2: PROOF(m, D[n]) = SUBPROOF(m, D[n], true), where
    SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])};
    for m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);
    for m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    Defined for 0 < m < n; PROOF(n, D[n]) is empty as RFC 9162 2.1.4 has it."""
    if not 0 < m <= len(leaves):
        raise ValueError(f"no consistency proof from {m} to {len(leaves)}")

    def sub(m: int, d: list[bytes], whole: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if whole else [mth(d)]
        k = largest_power_below(n)
        if m <= k:
            return [*sub(m, d[:k], whole), mth(d[k:])]
        return [*sub(m - k, d[k:], False), mth(d[:k])]

    return sub(m, leaves, True)


def note_key_id(name: str, kind: int, public: bytes) -> bytes:
    """C2SP signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return sha256(name.encode() + b"\n" + bytes([kind]) + public)[:4]


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The text (with its final newline) and the (name, decoded signature) lines after the last
    blank line."""
    cut = note.rindex("\n\n")
    lines = note[cut + 2 :].splitlines()
    signatures = []
    for line in lines:
        dash, name, encoded = line.split(" ")
        assert dash == "\u2014"
        signatures.append((name, base64.b64decode(encoded)))
    return note[: cut + 1], signatures


def ed25519_ok(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def open_checkpoint(note: str, origin: str, public: bytes) -> tuple[int, bytes]:
    """C2SP tlog-checkpoint in a signed note: check the log's Ed25519 signature (type 0x01, key
    name = origin), return (tree size, root hash). Raises on anything else."""
    body, signatures = split_note(note)
    wanted = note_key_id(origin, 0x01, public)
    mine = [s for name, s in signatures if name == origin and s[:4] == wanted]
    if not mine or not all(ed25519_ok(public, s[4:], body.encode()) for s in mine):
        raise ValueError("not signed by the log's key")
    origin_line, size, root, *extensions = body.split("\n")
    assert origin_line == origin
    assert extensions == [""]
    return int(size), base64.b64decode(root)


def cosigned(note: str, witness: str, public: bytes) -> int | None:
    """C2SP tlog-cosignature v1: the time a witness's cosignature states, if it verifies."""
    body, signatures = split_note(note)
    wanted = note_key_id(witness, 0x04, public)
    for name, signature in signatures:
        if name == witness and signature[:4] == wanted:
            timestamp = int.from_bytes(signature[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()
            if ed25519_ok(public, signature[12:], message):
                return timestamp
    return None
