"""What refusing a hostile document costs: fragment doubling, each under a new operation name so
that no cached refusal answers it. Measured in process, as the gateway prepares a document (parse
with the token cap, measure, refuse), since the refusal happens before any I/O."""

from __future__ import annotations

import statistics
import time
from typing import Any

from gateway.web.operations import Limits, Preparer, Refusal


def doubling(fragments: int, name: str = "") -> str:
    """Fragment F(k) spreads F(k-1) twice: 2^k fields from a few bytes a fragment."""
    parts = ["fragment F0 on Query { __typename }"]
    parts += [
        f"fragment F{k} on Query {{ ...F{k - 1} ...F{k - 1} }}" for k in range(1, fragments + 1)
    ]
    parts.append(f"query {name} {{ ...F{fragments} }}")
    return "\n".join(parts)


def refusal_cost(*, fragments: int = 40, documents: int = 300) -> dict[str, Any]:
    from schema import schema

    preparer = Preparer(schema._schema, Limits())
    spent: list[float] = []
    for index in range(documents):
        document = doubling(fragments, f"Q{index}")
        began = time.perf_counter()
        refused = preparer.prepare(document)
        spent.append(time.perf_counter() - began)
        assert isinstance(refused, Refusal)
    return {
        "fragments": fragments,
        "bytes": len(doubling(fragments, "Q0")),
        "median_ms": statistics.median(spent) * 1000,
        "max_ms": max(spent) * 1000,
    }
