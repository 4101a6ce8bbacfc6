"""Shared fixtures: the public test data in ../shared/data (override with PETRECON_TEST_DATA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_DATA = Path(os.environ.get("PETRECON_TEST_DATA", _DEFAULT_DATA)).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the public test files; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA} (set PETRECON_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models are faster so than on contended shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
