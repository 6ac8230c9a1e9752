"""Tillit's core: settings, storage, authentication, the access decision, audit and the CLI."""
