"""PostgreSQL: connections, the typed query protocol, models, migrations, the embedded server."""
