"""Reading an import file: UTF-8 CSV, a row at a time, in batches, with line numbers."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


class ImportFileError(Exception):
    """The file as a whole cannot be imported; nothing was written."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    cells: list[str]


def open_csv(path: Path) -> TextIO:
    # utf-8-sig: a byte-order mark, as spreadsheet programs write it, is not part of the header.
    return path.open(encoding="utf-8-sig", errors="strict", newline="")


def csv_line(exc: csv.Error) -> int:
    return int(getattr(exc, "line_num", 0) or 0)


def line_of_bad_byte(path: Path) -> int:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def batches(path: Path, size: int) -> Iterator[list[Row]]:
    with open_csv(path) as handle:
        reader = csv.reader(handle)
        next(reader)
        batch: list[Row] = []
        for cells in reader:
            batch.append(Row(reader.line_num, cells))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def check_file(path: Path, check_header: Callable[[list[str]], object]) -> tuple[list[str], int]:
    """The header (refused by `check_header` raising ImportFileError) and the number of data
    rows, read once in constant memory before anything is written."""
    try:
        with open_csv(path) as handle:
            reader = csv.reader(handle)
            try:
                header = [name.strip() for name in next(reader)]
            except StopIteration:
                raise ImportFileError(1, "the file is empty") from None
            if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
                raise ImportFileError(1, "wrong delimiter: columns are separated by commas")
            if len(set(header)) != len(header):
                raise ImportFileError(1, "a column is named twice")
            check_header(header)
            return header, sum(1 for _ in reader)
    except UnicodeDecodeError:
        line = line_of_bad_byte(path)
        raise ImportFileError(line, "not UTF-8 text (save the file as UTF-8)") from None
    except csv.Error as exc:
        raise ImportFileError(csv_line(exc), f"unreadable CSV: {exc}") from None
