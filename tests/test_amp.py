"""bf16 autocast: manualgrad's outputs and gradients have native torch's dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import manualgrad
import manualgrad.nn as mnn
from manualgrad.activations import ACTIVATIONS


def _pair(make_native, hand: bool = False) -> tuple[nn.Module, nn.Module]:
    """A native model and its manualgrad twin: converted, or (``hand``) composed of ``mnn`` layers
    one by one, so that each layer is its own Function (the second Linear then gets a bf16 input
    and a float32 weight)."""
    torch.manual_seed(0)
    ref = make_native()
    import copy

    if not hand:
        return ref, manualgrad.convert(copy.deepcopy(ref))
    layers = [manualgrad.convert(copy.deepcopy(m)) for m in ref]
    return ref, nn.Sequential(*layers)


MODELS = {
    "linear": lambda: nn.Linear(8, 4),
    "linear-3d": lambda: nn.Linear(8, 4),
    "mlp-relu": lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
    "mlp-gelu": lambda: nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)),
    "bilinear": lambda: nn.Bilinear(8, 8, 4),
    "hand-mlp-relu": lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_autocast_dtypes_match_native(name: str) -> None:
    ref, mine = _pair(MODELS[name], hand=name.startswith("hand"))
    x = torch.randn(2, 3, 8) if name.endswith("3d") else torch.randn(5, 8)
    args = (x, x) if name == "bilinear" else (x,)
    results = []
    for model in (ref, mine):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(*args)
        y.float().sum().backward()
        results.append((y, [p.grad for p in model.parameters()]))
    (y_ref, g_ref), (y, g) = results
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    for a, b in zip(g, g_ref, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=list(ACTIVATIONS))
def test_activation_dtypes_under_autocast(act) -> None:
    params = act.examples[0]
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(6, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = getattr(mnn, act.module)(*params)(x)
            y_ref = getattr(nn, act.module)(*params)(x)
        assert y.dtype == y_ref.dtype
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.dtype == x.dtype
