"""gateway.store.uuids.uuid_of reads exactly what uuid.UUID reads, into the fast type."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.uuids import uuid_of

SAMPLE = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize(
    "text",
    [
        "12345678-1234-5678-1234-567812345678",
        "12345678123456781234567812345678",
        "ABCDEF78-1234-5678-1234-567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "1234-5678-1234-5678-1234-5678-1234-5678",
    ],
)
def test_every_spelling_uuid_reads_is_read_alike(text: str) -> None:
    parsed = uuid_of(text)

    assert parsed == uuid.UUID(text)
    assert isinstance(parsed, uuid.UUID)
    assert str(parsed) == str(uuid.UUID(text))
    assert hash(parsed) == hash(uuid.UUID(text))


@pytest.mark.parametrize(
    "bad", ["", "not-a-uuid", " 12345678-1234-5678-1234-567812345678", "g" * 32, None, 7]
)
def test_what_uuid_refuses_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError, AttributeError)):
        uuid.UUID(bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError, AttributeError)):
        uuid_of(bad)  # type: ignore[arg-type]


@given(
    st.lists(st.sampled_from("0123456789abcdefABCDEF-{}:urnid xg"), min_size=28, max_size=46).map(
        "".join
    )
    | st.uuids().map(str)
)
def test_uuid_of_accepts_exactly_what_uuid_accepts(text: str) -> None:
    try:
        expected: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        expected = None
    try:
        got: uuid.UUID | None = uuid_of(text)
    except ValueError:
        got = None

    assert got == expected
