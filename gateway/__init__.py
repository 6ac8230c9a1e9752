"""Tillit's core. The layers, top to bottom: app and cli, web, (schema, resolvers), records,
access | audit, store, and the shared vocabulary (settings, errors, domain, logs, signing)."""
