"""A first look at a GraphQL document, before graphql-core parses it: its operations' root fields
and aliases with fragments expanded, and a floor under their cost.

graphql-core's parser is pure Python (about 8 µs a token here), so parsing a hostile document of
a kilobyte costs more than everything else its refusal takes. This scan reads the same text with
one C-compiled regular expression and a small walk over the tokens, and sums each fragment once,
as the measurer does: a document whose root fields, aliases or cost floor are over a limit is
refused in a fraction of the parse. It only ever refuses what the measurer would refuse too (the
root-field and alias counts are the measurer's own; every field the measurer prices costs it at
least one), and says nothing (None) about any text it does not fully understand: the parser then
decides, and reports errors in its own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<skip>[\s,\ufeff]+|\#[^\n\r]*)
    |(?P<block>\"\"\"(?:\\\"\"\"|[^"]|"(?!""))*\"\"\")
    |(?P<string>"(?:\\.|[^"\\\n\r])*")
    |(?P<spread>\.\.\.)
    |(?P<punct>[!$&()\[\]{}:=@|])
    |(?P<name>[_A-Za-z][_0-9A-Za-z]*)
    |(?P<number>-?[0-9][0-9.eE+-]*)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Deeper than this, leave the document to the parser (which has a nesting limit of its own).
_MAX_NESTING = 64


class _Unsure(Exception):
    """The scan met text it does not model: no verdict."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The lexical tokens graphql-core would count, and per operation, in document order,
    (root fields, aliases, cost floor); no operations when the tokens are over the cap."""

    tokens: int
    operations: tuple[tuple[int, int, int], ...]


@dataclass(slots=True)
class _Set:
    """A selection set as scanned: its own fields, aliases and priced fields, and the fragments
    spread in it (directly or through inline fragments, which add to the same level)."""

    fields: int = 0
    aliases: int = 0
    priced: int = 0
    spreads: list[str] = field(default_factory=list)
    children: list[_Set] = field(default_factory=list)


def _tokens(text: str) -> list[str]:
    tokens = []
    for found in _TOKEN.finditer(text):
        kind = found.lastgroup
        if kind == "skip":
            continue
        if kind == "other":
            raise _Unsure
        tokens.append(found.group())
    return tokens


class _Scan:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> str:
        if self.at >= len(self.tokens):
            raise _Unsure
        token = self.tokens[self.at]
        self.at += 1
        return token

    def name(self) -> str:
        token = self.take()
        if not (token[0].isalpha() or token[0] == "_"):
            raise _Unsure
        return token

    def balanced(self, opening: str, closing: str) -> None:
        """Skip a parenthesised (or bracketed) run, whatever it holds."""
        if self.take() != opening:
            raise _Unsure
        depth = 1
        while depth:
            token = self.take()
            if token == opening:
                depth += 1
            elif token == closing:
                depth -= 1

    def directives(self) -> None:
        while self.peek() == "@":
            self.take()
            self.name()
            if self.peek() == "(":
                self.balanced("(", ")")

    def selection_set(self, nesting: int) -> _Set:
        if nesting > _MAX_NESTING or self.take() != "{":
            raise _Unsure
        level = _Set()
        while self.peek() != "}":
            if self.peek() == "...":
                self.take()
                if self.peek() not in ("on", "{", "@"):
                    level.spreads.append(self.name())
                    self.directives()
                    continue
                if self.peek() == "on":
                    self.take()
                    self.name()
                self.directives()
                inner = self.selection_set(nesting + 1)  # an inline fragment: the same level
                level.fields += inner.fields
                level.aliases += inner.aliases
                level.priced += inner.priced
                level.spreads += inner.spreads
                level.children += inner.children
                continue
            name = self.name()
            level.fields += 1
            if self.peek() == ":":
                self.take()
                name = self.name()
                level.aliases += 1
            if self.peek() == "(":
                self.balanced("(", ")")
            self.directives()
            child = self.selection_set(nesting + 1) if self.peek() == "{" else None
            if name.startswith("__"):
                continue  # free, and not looked into, as the measurer does
            level.priced += 1
            if child is not None:
                level.children.append(child)
        self.take()
        return level

    def document(self) -> tuple[list[_Set], dict[str, _Set]]:
        operations: list[_Set] = []
        fragments: dict[str, _Set] = {}
        while self.peek() is not None:
            head = self.peek()
            if head == "{":
                operations.append(self.selection_set(1))
            elif head in ("query", "mutation", "subscription"):
                self.take()
                if self.peek() not in ("(", "@", "{"):
                    self.name()
                if self.peek() == "(":
                    self.balanced("(", ")")
                self.directives()
                operations.append(self.selection_set(1))
            elif head == "fragment":
                self.take()
                name = self.name()
                if self.take() != "on":
                    raise _Unsure
                self.name()
                self.directives()
                fragments[name] = self.selection_set(1)
            else:
                raise _Unsure
        return operations, fragments


def _totals(
    level: _Set,
    fragments: dict[str, _Set],
    memo: dict[int, tuple[int, int, int]],
    path: frozenset[int],
) -> tuple[int, int, int]:
    """(fields at this level, aliases below and at it, priced fields below and at it), fragments
    expanded, each summed once; a cycle counts nothing (validation refuses it)."""
    key = id(level)
    if key in memo:
        return memo[key]
    if key in path:
        return 0, 0, 0
    inside = path | {key}
    fields, aliases, priced = level.fields, level.aliases, level.priced
    for name in level.spreads:
        fragment = fragments.get(name)
        if fragment is not None:
            f, a, p = _totals(fragment, fragments, memo, inside)
            fields, aliases, priced = fields + f, aliases + a, priced + p
    for child in level.children:
        _, a, p = _totals(child, fragments, memo, inside)
        aliases, priced = aliases + a, priced + p
    memo[key] = (fields, aliases, priced)
    return memo[key]


def prescan(text: str, max_tokens: int | None = None) -> Shape | None:
    """The document's shape, or None when the scan cannot vouch for it. Over `max_tokens`
    tokens the operations are not looked at."""
    try:
        tokens = _tokens(text)
        counted = len(tokens) + 1  # graphql-core counts the end of the document too
        if max_tokens is not None and counted > max_tokens:
            return Shape(counted, ())
        operations, fragments = _Scan(tokens).document()
    except _Unsure:
        return None
    memo: dict[int, tuple[int, int, int]] = {}
    try:
        totals = tuple(_totals(o, fragments, memo, frozenset()) for o in operations)
    except RecursionError:  # a chain of fragments longer than the stack: the parser decides
        return None
    return Shape(counted, totals)
