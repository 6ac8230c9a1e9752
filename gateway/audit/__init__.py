"""The audit trail: write it, seal it, verify it, export it, report from it."""
