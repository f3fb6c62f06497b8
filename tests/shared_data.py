"""The shared real datasets (../shared/data), for tests: a module of its own, since tests/contract has a conftest too."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a dataset in ../shared/data, or a visible skip where ../shared is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"../shared/data/{name} is absent on this machine (needed for real-data tests)")
    return path
