"""Fixtures of the fault suite: a folder for each case's servers and logs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short folder (Unix socket paths are limited to ~100 bytes)."""
    return tmp_path_factory.mktemp("f")
