"""CUDA variants (skipped without a CUDA device): parity with torch.nn on the GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import manualgrad
from manualgrad.activations import ACTIVATIONS
from tests.helpers import foreign_nodes

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=list(ACTIVATIONS))
def test_cuda_mlp_parity(act, dtype: torch.dtype) -> None:
    params = act.examples[0]
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), getattr(nn, act.module)(*params), nn.Linear(32, 4)).to("cuda", dtype)
    mine = manualgrad.convert(copy.deepcopy(ref))
    x = torch.randn(64, 16, device="cuda", dtype=dtype)
    y_ref, y = ref(x), mine(x)
    assert foreign_nodes(y) == []
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(
        torch.autograd.grad(y, list(mine.parameters()), g),
        torch.autograd.grad(y_ref, list(ref.parameters()), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_cuda_bf16_autocast_dtypes() -> None:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).cuda()
    mine = manualgrad.convert(copy.deepcopy(ref))
    x = torch.randn(8, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref, y = ref(x), mine(x)
    assert y.dtype == y_ref.dtype
    y.float().sum().backward()
    y_ref.float().sum().backward()
    for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
        assert a.grad.dtype == b.grad.dtype  # type: ignore[union-attr]
        torch.testing.assert_close(a.grad, b.grad, rtol=3e-2, atol=3e-2)
