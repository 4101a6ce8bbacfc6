"""Shared fixtures: the public test data in ../shared/data (override with PETRECON_TEST_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_DATA = Path(os.environ.get("PETRECON_TEST_DATA", _DEFAULT_DATA)).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the public test files; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA} (set PETRECON_TEST_DATA)")
    return SHARED_DATA
