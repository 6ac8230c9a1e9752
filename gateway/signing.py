"""Ed25519 keys for audit checkpoints and export manifests.

The signing key lives outside the database (an environment variable or a secret store), so that
whoever can write to the database still cannot forge a checkpoint. Auditors verify with the
public key alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# The log's name in its checkpoints (C2SP tlog-checkpoint's origin line, and the key name of the
# log's signature on them) unless TILLIT_AUDIT_ORIGIN names it.
DEFAULT_LOG_ORIGIN = "tillit.local/audit"
# Public by being in this file: refused outside dev mode (see settings).
DEV_AUDIT_SEED = hashlib.sha256(b"tillit development audit key, never for production").digest()


class InvalidKey(ValueError):
    """A configured key is not a base64 Ed25519 key."""


def _decode(value: str, name: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"{name} is not base64") from None
    if len(raw) != 32:
        raise InvalidKey(f"{name} must be 32 bytes (base64 of an Ed25519 key)")
    return raw


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verifier:
    public: Ed25519PublicKey

    @classmethod
    def from_base64(cls, value: str) -> Verifier:
        return cls(Ed25519PublicKey.from_public_bytes(_decode(value, "TILLIT_AUDIT_VERIFY_KEY")))

    @property
    def key_id(self) -> str:
        return key_id_of(self.public)

    @property
    def raw(self) -> bytes:
        return self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_base64(self) -> str:
        return base64.b64encode(self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey
    # The log this key signs for: its checkpoints' origin line and the key's name on them.
    origin: str = DEFAULT_LOG_ORIGIN

    @classmethod
    def from_seed(cls, seed: bytes, origin: str = DEFAULT_LOG_ORIGIN) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(seed), origin)

    @classmethod
    def from_base64(cls, value: str, origin: str = DEFAULT_LOG_ORIGIN) -> Signer:
        return cls.from_seed(_decode(value, "TILLIT_AUDIT_SIGNING_KEY"), origin)

    @classmethod
    def generate(cls) -> tuple[Signer, str]:
        """A new key and its base64 seed (to store as TILLIT_AUDIT_SIGNING_KEY)."""
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes_raw()
        return cls(private), base64.b64encode(seed).decode()

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private.public_key())

    @property
    def key_id(self) -> str:
        return self.verifier.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)
