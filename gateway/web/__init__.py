"""HTTP: one operation boundary, the GraphQL endpoint, limits, rate limits, metrics."""
