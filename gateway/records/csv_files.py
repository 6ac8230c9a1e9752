"""Reading an import file: UTF-8 CSV, a row at a time, in batches, with line numbers; and writing
its reject file, defused for the spreadsheet it is fixed in."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateway.audit.export import defuse_csv_cell


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


def line_of_bad_byte(path: Path) -> int:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _rows(handle: TextIO) -> Iterator[Row]:
    """Each record with its line, or ImportFileError at the line the unreadable one starts on
    (the csv module's errors carry no line)."""
    reader = csv.reader(handle)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(start, f"unreadable CSV: {exc}") from None
        yield Row(reader.line_num, cells)


def batches(path: Path, size: int) -> Iterator[list[Row]]:
    with open_csv(path) as handle:
        rows = _rows(handle)
        next(rows)
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
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
            rows = _rows(handle)
            first = next(rows, None)
            if first is None:
                raise ImportFileError(1, "the file is empty")
            header = [name.strip() for name in first.cells]
            if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
                raise ImportFileError(1, "wrong delimiter: columns are separated by commas")
            if len(set(header)) != len(header):
                raise ImportFileError(1, "a column is named twice")
            check_header(header)
            return header, sum(1 for _ in rows)
    except UnicodeDecodeError:
        line = line_of_bad_byte(path)
        raise ImportFileError(line, "not UTF-8 text (save the file as UTF-8)") from None


class RejectFile:
    """Where an import's refused rows go, with line, code and reason, to be fixed in a
    spreadsheet: every cell is defused, so that the spreadsheet runs none of them."""

    def __init__(self, rejects: TextIO, header: list[str]) -> None:
        self._writer = csv.writer(rejects)
        self._write(["line", "code", "reason", *header])

    def refuse(self, row: Row, code: str, reason: str) -> None:
        """One refused row, its cells as the file gave them (defused)."""
        self._write([str(row.line), code, reason, *row.cells])

    def _write(self, cells: list[str]) -> None:
        self._writer.writerow([defuse_csv_cell(cell) for cell in cells])
