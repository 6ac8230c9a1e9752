"""Checkpoints as C2SP signed notes, and witnesses' cosignatures on them.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text

    <origin>\\n<tree size, decimal>\\n<root hash, base64>\\n

signed as a c2sp.org/signed-note: a blank line, then one line per signature,
`— <key name> base64(key ID || signature)`, the key ID being the first four bytes of
SHA-256(key name || 0x0A || signature type || public key). The log signs with Ed25519 (type 0x01)
under its origin as key name; a witness cosigns (c2sp.org/tlog-cosignature, type 0x04) the message
`cosignature/v1\\ntime <seconds>\\n` + the note text, its signature being the 8-byte big-endian time
and the Ed25519 signature.

Public keys travel as vkeys, `<name>+<key ID, 8 hex digits>+base64(type || public key)`, the form
Go's golang.org/x/mod/sumdb/note and the transparency-dev witnesses read; a witness's private key
as `PRIVATE+KEY+<name>+<key ID>+base64(0x04 || seed)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.signing import Signer, Verifier

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
DASH = "\u2014"
# A checkpoint with more signature lines than this is refused (signed-note: at least 16).
MAX_SIGNATURES = 32
MAX_NOTE_BYTES = 16_384
_NAME = re.compile(r"[^\s+\x00-\x1f\u2014]{1,200}")


class NoteError(ValueError):
    """A note, key or signature that is malformed or does not verify; the message says why."""


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NoteKey:
    """A public key a note's signatures are checked with."""

    name: str
    kind: int
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.public)

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([self.kind]) + self.public).decode()
        return f"{self.name}+{self.id.hex()}+{encoded}"

    @classmethod
    def parse(cls, vkey: str) -> NoteKey:
        """A vkey: `name+hex key ID+base64(type || key)`; Ed25519 (0x01) or cosignature (0x04)."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not valid_name(parts[0]):
            raise NoteError("not a verifier key (name+keyid+base64)")
        name, hex_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
            wanted = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError("not a verifier key (name+keyid+base64)") from None
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError("only Ed25519 verifier keys (type 0x01 or 0x04) are supported")
        key = cls(name, raw[0], raw[1:])
        if key.id != wanted:
            raise NoteError(f"the key ID of {name}'s verifier key does not match the key")
        return key

    @classmethod
    def of_log(cls, origin: str, verifier: Verifier) -> NoteKey:
        return cls(origin, ED25519, _raw(verifier.public))

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


# -- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeHead:
    origin: str
    size: int
    root: bytes

    @property
    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse_body(cls, body: str) -> TreeHead:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint is an origin, a size and a root hash, each on a line")
        origin, size, root = lines[0], lines[1], lines[2]
        # ASCII digits only: str.isdigit takes "٣" (and int() reads it as 3) and "²" (which
        # int() refuses with a ValueError, not a NoteError); 20 digits hold any 64-bit size.
        if not origin or not re.fullmatch(r"0|[1-9][0-9]{0,19}", size):
            raise NoteError("the checkpoint's origin or size line is malformed")
        try:
            raw_root = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError):
            raise NoteError("the checkpoint's root hash is not base64") from None
        if len(raw_root) != 32:
            raise NoteError("the checkpoint's root hash is not 32 bytes")
        return cls(origin, int(size), raw_root)


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    value: bytes  # after the key ID

    @property
    def line(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.id + self.value).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    @classmethod
    def parse(cls, note: str) -> Note:
        """Split a signed note into its text and signature lines (checks the form only)."""
        if len(note.encode()) > MAX_NOTE_BYTES:
            raise NoteError("the note is too large")
        if any(c < " " and c != "\n" for c in note):
            raise NoteError("a note holds no control characters but newlines")
        cut = note.rfind("\n\n")
        if cut < 0 or not note.endswith("\n"):
            raise NoteError("not a signed note: no blank line before the signatures")
        text, lines = note[: cut + 1], note[cut + 2 :].split("\n")[:-1]
        if not lines or len(lines) > MAX_SIGNATURES:
            raise NoteError("a signed note has between 1 and 32 signature lines")
        signatures = []
        for line in lines:
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != DASH or not valid_name(parts[1]):
                raise NoteError("a signature line is `— <name> <base64>`")
            try:
                raw = base64.b64decode(parts[2], validate=True)
            except (binascii.Error, ValueError):
                raise NoteError("a signature is not base64") from None
            if len(raw) < 5:
                raise NoteError("a signature is too short")
            signatures.append(Signature(parts[1], raw[:4], raw[4:]))
        return cls(text, tuple(signatures))

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line for s in self.signatures)

    def by(self, key: NoteKey) -> list[Signature]:
        return [s for s in self.signatures if s.name == key.name and s.id == key.id]


def sign_checkpoint(checkpoint: TreeHead, signer: Signer) -> str:
    """The checkpoint as a note signed by the log (its origin is the key name)."""
    key = NoteKey.of_log(checkpoint.origin, signer.verifier)
    signature = Signature(key.name, key.id, signer.sign(checkpoint.body.encode()))
    return Note(checkpoint.body, (signature,)).render()


def open_checkpoint(note: str, keys: list[NoteKey]) -> tuple[TreeHead, Note, NoteKey]:
    """The checkpoint in a note signed by one of the log's `keys`, which must verify (any
    signature by a known key that fails makes the whole note refused). Returns the checkpoint,
    the parsed note and the key that signed it."""
    parsed = Note.parse(note)
    checkpoint = TreeHead.parse_body(parsed.text)
    signed_by: NoteKey | None = None
    for key in keys:
        for signature in parsed.by(key):
            if key.kind != ED25519 or not key.verify(signature.value, parsed.text.encode()):
                raise NoteError(f"the signature by {key.name} ({key.id.hex()}) does not verify")
            signed_by = key
    if signed_by is None:
        raise NoteError("the checkpoint is not signed by any key of the log known here")
    if checkpoint.origin != signed_by.name:
        raise NoteError("the checkpoint's origin is not its signer's name")
    return checkpoint, parsed, signed_by


# -- cosignatures -----------------------------------------------------------------------------


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


@dataclass(frozen=True)
class WitnessKey:
    """A witness's private key and its name."""

    name: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> NoteKey:
        return NoteKey(self.name, COSIGNATURE_V1, _raw(self.private.public_key()))

    @classmethod
    def generate(cls, name: str) -> WitnessKey:
        if not valid_name(name):
            raise NoteError("a witness name has no spaces, no + and no control characters")
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def skey(self) -> str:
        seed = base64.b64encode(bytes([COSIGNATURE_V1]) + self.private.private_bytes_raw())
        return f"PRIVATE+KEY+{self.name}+{self.public.id.hex()}+{seed.decode()}"

    @classmethod
    def parse(cls, skey: str) -> WitnessKey:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not valid_name(parts[2]):
            raise NoteError("not a witness key (PRIVATE+KEY+name+keyid+base64)")
        try:
            raw = base64.b64decode(parts[4], validate=True)
            wanted = bytes.fromhex(parts[3])
        except (binascii.Error, ValueError):
            raise NoteError("not a witness key (PRIVATE+KEY+name+keyid+base64)") from None
        if len(raw) != 33 or raw[0] != COSIGNATURE_V1:
            raise NoteError("a witness key is an Ed25519 cosignature key (type 0x04)")
        key = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if key.public.id != wanted:
            raise NoteError("the witness key's key ID does not match the key")
        return key

    def cosign(self, text: str, timestamp: int) -> Signature:
        signature = self.private.sign(cosigned_message(text, timestamp))
        return Signature(self.name, self.public.id, struct.pack(">Q", timestamp) + signature)


def cosignature_time(key: NoteKey, signature: Signature, text: str) -> int | None:
    """The time a cosignature by `key` states, if it verifies over the note text; else None."""
    if key.kind != COSIGNATURE_V1 or len(signature.value) != 72:
        return None
    timestamp = int.from_bytes(signature.value[:8], "big")
    if timestamp >= 1 << 63:
        return None
    if not key.verify(signature.value[8:], cosigned_message(text, timestamp)):
        return None
    return timestamp
