"""The response media types of GraphQL over HTTP, and the status code each gives an answer.

The GraphQL Foundation's GraphQL-over-HTTP specification defines two:

- `application/graphql-response+json`, which clients that know it ask for first (Apollo Client 4
  does): a request that could not execute (a document that does not parse or validate, variables
  that do not coerce, an operation over a limit) is 400 with no `data` entry, and a response with
  `data`, however partial, is 200.
- `application/json`, the legacy type, for clients that ask for it, send `*/*` or no `Accept` at
  all: every well-formed request that reached GraphQL is 200, its errors in the body.

Either way a request that is not GraphQL at all (not JSON, not an object with a `query`) is 400, a
key or token that is wrong is 401, too many requests 429, an unreachable audit trail 503.
"""

from __future__ import annotations

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
_SUPPORTED = {
    GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
    JSON: JSON,
    "application/*": JSON,
    "*/*": JSON,
}
# An Accept header is short; a long one is not parsed beyond this many entries.
_MAX_ENTRIES = 32


def negotiate(accept: str | None) -> str | None:
    """The media type to answer in, by the `Accept` header's preference (q, then order); None
    when the header names neither type (406)."""
    if accept is None or not accept.strip():
        return JSON
    best: tuple[float, bool, int] | None = None
    answer: str | None = None
    for position, entry in enumerate(accept.split(",")[:_MAX_ENTRIES]):
        kind, *parameters = (part.strip() for part in entry.split(";"))
        chosen = _SUPPORTED.get(kind.lower())
        if chosen is None:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        # The higher q wins; between equals an exact type before a wildcard, then the earlier.
        rank = (quality, "*" not in kind, -position)
        if best is None or rank > best:
            best, answer = rank, chosen
    return answer


def status_of(status: int, *, request_error: bool, media_type: str) -> int:
    """The HTTP status of an answer in `media_type`: a GraphQL request error (the request was
    well-formed but could not execute) is 400 in the new type and 200 in the legacy one."""
    if request_error and media_type == JSON:
        return 200
    return status
