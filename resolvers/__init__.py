"""Query and mutation resolvers: thin steps between the GraphQL schema and the gateway's core.

They ask the access decision what may be released and load it through per-request loaders. They
hold no SQL and no policy, and know nothing of HTTP.
"""
