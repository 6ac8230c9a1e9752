"""UUIDs read from text on the hot path.

asyncpg's own UUID type (a `uuid.UUID` subclass, the type PostgreSQL's uuid columns come back as)
parses, prints, hashes and is sent to PostgreSQL in C: reading one was measured at 0.5 µs against
3.3 µs for `uuid.UUID`, and printing one at 0.3 µs against 1.8 µs. A hundred-member read does
each a hundred times or more.
"""

from __future__ import annotations

import uuid

from asyncpg.pgproto.pgproto import UUID as _FastUUID


def uuid_of(text: str) -> uuid.UUID:
    """The UUID `uuid.UUID(text)` reads, with its errors (ValueError, TypeError, AttributeError).

    The fast parser takes only hex digits and hyphens; the other spellings `uuid.UUID` accepts
    (braces, a `urn:uuid:` prefix) go through `uuid.UUID` and come back as the fast type too.
    """
    try:
        parsed: uuid.UUID = _FastUUID(text)
    except (ValueError, TypeError):
        parsed = _FastUUID(uuid.UUID(text).bytes)
    return parsed


def canonical_uuid(text: str) -> uuid.UUID:
    """A UUID a caller sent, only in its canonical spelling (36 characters, lower-case hex and
    hyphens, 8-4-4-4-12); ValueError for any other, even one `uuid.UUID` would read (`urn:uuid:`,
    braces, no hyphens, upper case). One id, one spelling: ids are compared, cached, counted and
    logged as text, and two spellings of one member must not pass for two."""
    if not isinstance(text, str) or len(text) != 36:
        raise ValueError("not a UUID in its canonical form")
    parsed: uuid.UUID = _FastUUID(text)
    if str(parsed) != text:
        raise ValueError("not a UUID in its canonical form")
    return parsed
