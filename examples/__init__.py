"""Example applications built on the toolkit (importable from the repository root)."""
