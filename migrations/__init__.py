"""Alembic migrations of Tillit's schema. Run them with `tillit migrate`."""
