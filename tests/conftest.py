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


@pytest.fixture(autouse=True)
def _fresh_kernel_accounting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from FUSION's initial compile-cost estimate and no eager seconds counted, as a
    fresh process does: the break-even rule's time-dependent switch to compiled kernels never carries
    over from earlier tests of the same worker into a test's reproducibility checks (exact resume)."""
    from manualgrad.fusion import FUSION

    fresh = type(FUSION)()
    for name in ("_eager_seconds", "_compiles", "compile_seconds"):
        monkeypatch.setattr(FUSION, name, getattr(fresh, name))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Verified MNIST raw files in the shared data root (``$MANUALGRAD_DATA`` or ``<repo>/data``), fetched once."""
    from train.data import default_data_root, prepare_mnist

    return prepare_mnist(default_data_root())
