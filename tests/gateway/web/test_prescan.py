"""The prescan: before graphql-core parses a document, it counts the operations' root fields and
aliases (fragments expanded, each once) and a floor under their cost. It must agree with the
measurer on every document graphql-core accepts, and say nothing about text it does not follow."""

from __future__ import annotations

import hypothesis_graphql as hg
import pytest
from graphql import parse, print_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import nodes

from bench.hostile import doubling
from gateway.web.operations import Limits, Preparer, Refusal, measure
from gateway.web.prescan import prescan
from schema import schema

SDL = print_schema(schema._schema)
# Strings with the characters that could trip a scan: quotes, braces, hashes, backslashes.
TEXT = st.text(alphabet='ab"{}()#\\ .:@\n', max_size=20).map(nodes.String)
SCALARS = {
    "ID": TEXT,
    "String": TEXT,
    "Date": st.just(nodes.String("2026-01-01")),
    "DateTime": st.just(nodes.String("2026-01-01T00:00:00Z")),
    "JSON": st.just(nodes.String("{}")),
}
LIMITS = Limits(max_cost=10**9, max_aliases=10**9, max_root_fields=10**9, max_depth=10**9)


def agrees(text: str) -> None:
    shape = prescan(text)
    assert shape is not None, text
    measured = list(measure(schema._schema, parse(text), LIMITS).values())
    assert len(shape.operations) == len(measured)
    for (root_fields, aliases, priced), m in zip(shape.operations, measured, strict=True):
        assert (root_fields, aliases) == (m.root_fields, m.aliases), text
        assert priced <= m.cost, text  # a floor: each priced field costs the measurer at least 1


@given(
    text=st.one_of(
        hg.queries(SDL, custom_scalars=SCALARS), hg.mutations(SDL, custom_scalars=SCALARS)
    ).map(str)
)
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_the_prescan_agrees_with_the_measurer_on_generated_operations(text: str) -> None:
    agrees(text)


@pytest.mark.parametrize(
    "text",
    [
        doubling(12),
        doubling(3, "Named"),
        "query { me { ...A } } fragment A on Me { a: accessLog(first: 2) { edges { ...B } } }"
        " fragment B on MyAccessEdge { node { occurredAt } }",
        'query Q($ids: [ID!]! = ["a"], $p: String = "x") @d(a: {b: [1, 2.5e3]}) '
        "{ x: members(ids: $ids, purpose: $p) @include(if: true) { ... on Member { id } "
        "... @skip(if: false) { tier } __typename t: __typename } } # comment { ...\n"
        'mutation { grantConsent(purpose: "p", method: EXPLICIT, noticeVersion: """a " } """, '
        'channel: "\\" ) {") { receiptId } }',
        "{ me { ...Cycle } } fragment Cycle on Me { id ...Cycle }",
    ],
    ids=["doubling", "named", "nested-fragments", "arguments-directives-strings", "cycle"],
)
def test_the_prescan_agrees_with_the_measurer_on_awkward_documents(text: str) -> None:
    agrees(text)


@pytest.mark.parametrize(
    "text", ["{", "{ a } }", "query ?? { a }", "fragment F { a }", "{ a(b: 1 }"]
)
def test_text_the_prescan_does_not_follow_gets_no_verdict(text: str) -> None:
    assert prescan(text) is None


def test_the_prescan_counts_tokens_as_graphql_core_does() -> None:
    text = doubling(5) + ' { a(b: "c", d: [1, 2.5]) @x } # not a token'
    counted = 0
    for cap in range(1, 200):
        try:
            parse(text, max_tokens=cap)
        except Exception:  # noqa: S112  # over the cap: try the next one
            continue
        counted = cap
        break

    assert prescan(text).tokens == counted  # type: ignore[union-attr]


def test_a_doubling_document_is_refused_by_the_prescan_in_the_measurers_words() -> None:
    text = doubling(40)

    [(root_fields, _, _)] = prescan(text).operations  # type: ignore[union-attr]
    refused = Preparer(schema._schema, Limits()).prepare(text)

    assert root_fields == 2**40
    assert isinstance(refused, Refusal)
    assert refused.errors[0]["message"] == (
        f"The operation asks for {2**40} top-level fields; the limit is 5."
    )


def test_a_cost_floor_over_the_limit_is_refused_in_the_measurers_terms() -> None:
    # One root field, 2^30 priced fields below it.
    text = (
        doubling(30)
        .replace("on Query", "on Me")
        .replace("{ __typename }", "{ id }")
        .replace("query  { ...F30 }", "query { me { ...F30 } }")
    )

    [(root_fields, _, priced)] = prescan(text).operations  # type: ignore[union-attr]
    refused = Preparer(schema._schema, Limits()).prepare(text)

    assert (root_fields, priced) == (1, 1 + 2**30)
    assert isinstance(refused, Refusal)
    assert refused.errors[0]["message"] == (
        f"The operation's estimated cost is at least {1 + 2**30}; the limit is 25000."
    )
