"""Shared fixtures: deterministic seeds and the CUDA skip for ``@pytest.mark.gpu``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Verified MNIST raw files in the shared data root (``$MANUALGRAD_DATA`` or ``<repo>/data``), fetched once."""
    from train.data import default_data_root, prepare_mnist

    return prepare_mnist(default_data_root())
