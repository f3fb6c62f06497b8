"""The version of plmtune (kept equal to pyproject.toml's version; tests/test_saved.py checks)."""

__version__ = "0.1.0"
