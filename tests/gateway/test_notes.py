"""gateway.notes: a checkpoint's size line is ASCII decimal, as C2SP tlog-checkpoint writes it."""

from __future__ import annotations

import base64

import pytest

from gateway.notes import NoteError, TreeHead

ROOT = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize("size", ["0", "7", "18446744073709551615"])
def test_a_size_in_ascii_decimal_is_read(size: str) -> None:
    assert TreeHead.parse_body(f"example.org/log\n{size}\n{ROOT}\n").size == int(size)


@pytest.mark.parametrize("size", ["٣", "²", "07", "", "-1", "1e3", " 7", "1" * 21])
def test_any_other_size_is_a_note_error(size: str) -> None:
    with pytest.raises(NoteError, match="size line is malformed"):
        TreeHead.parse_body(f"example.org/log\n{size}\n{ROOT}\n")
