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
