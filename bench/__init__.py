"""The benchmark: Tillit beside the servers a team would otherwise write, in one run."""
