"""The nn twins: signatures, init, repr, state_dict both ways, convert, MLP layout."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import manualgrad
import manualgrad.nn as mnn
from tests.helpers import foreign_nodes

PARAM_MODULES = [
    pytest.param("Linear", (5, 3), {}, id="linear"),
    pytest.param("Linear", (5, 3), {"bias": False}, id="linear-no-bias"),
    pytest.param("Bilinear", (4, 3, 2), {}, id="bilinear"),
    pytest.param("Bilinear", (4, 3, 2), {"bias": False}, id="bilinear-no-bias"),
    pytest.param("PReLU", (3,), {"init": 0.1}, id="prelu"),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), PARAM_MODULES)
def test_twin_matches_torch(name: str, args: tuple, kwargs: dict) -> None:
    assert inspect.signature(getattr(mnn, name)) == inspect.signature(getattr(nn, name)) or [
        (p.name, p.default) for p in inspect.signature(getattr(mnn, name)).parameters.values()
    ] == [(p.name, p.default) for p in inspect.signature(getattr(nn, name)).parameters.values()]
    torch.manual_seed(1)
    ref = getattr(nn, name)(*args, **kwargs)
    torch.manual_seed(1)
    mine = getattr(mnn, name)(*args, **kwargs)
    assert repr(mine) == repr(ref)
    assert not isinstance(mine, getattr(nn, name))  # a twin, not a subclass
    # the same initial draws, names and shapes
    assert list(mine.state_dict()) == list(ref.state_dict())
    for (k, a), (_, b) in zip(mine.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # state_dict both ways
    other = getattr(nn, name)(*args, **kwargs)
    mine.load_state_dict(other.state_dict())
    ref2 = getattr(nn, name)(*args, **kwargs)
    ref2.load_state_dict(mine.state_dict())
    for a, b in zip(ref2.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_factory_kwargs() -> None:
    m = mnn.Linear(3, 2, dtype=torch.float64, device="cpu")
    assert m.weight.dtype == torch.float64 and m.bias.dtype == torch.float64
    assert mnn.Bilinear(2, 2, 1, dtype=torch.float16).weight.dtype == torch.float16
    m.reset_parameters()


def test_mlp_layout_matches_nn_sequential() -> None:
    torch.manual_seed(0)
    mlp = mnn.MLP(8, [6, 5], 3, activation="gelu", dropout=0.1)
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Linear(8, 6),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(6, 5),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(5, 3),
    )
    assert list(mlp.state_dict()) == list(ref.state_dict())
    for a, b in zip(mlp.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(4, 8)
    torch.testing.assert_close(mlp.eval()(x), ref.eval()(x))
    torch.manual_seed(5)
    y = mlp.train()(x)
    torch.manual_seed(5)
    torch.testing.assert_close(y, ref.train()(x))
    with pytest.raises(ValueError, match=r"expected activation to be one of .* but got 'relux'"):
        mnn.MLP(2, [2], 2, activation="relux")


class Custom(nn.Module):
    """A user module manualgrad knows nothing about."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class MyLinear(nn.Linear):
    """A subclass of a supported layer: it may override forward, so convert leaves it alone."""


def _mixed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6),
        nn.LeakyReLU(0.2),
        Custom(),
        nn.LayerNorm(6),
        nn.Sequential(nn.Linear(6, 6), nn.GELU("tanh")),
        MyLinear(6, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    )


def test_convert_mixed_model_in_place() -> None:
    model = _mixed_model()
    ref = copy.deepcopy(model)
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = manualgrad.convert(model)
    assert isinstance(out, mnn.Sequential)
    kinds = ["mg" if type(m).__module__.startswith("manualgrad") else type(m).__name__ for m in out]
    assert kinds == ["mg", "mg", "Custom", "LayerNorm", "mg", "MyLinear", "mg", "mg"]
    assert isinstance(out[4][1], mnn.GELU) and out[4][1].approximate == "tanh"
    assert type(out[5]) is MyLinear
    assert all(a is b for a, b in zip(out.parameters(), params, strict=True))  # the optimizer still holds them
    x = torch.randn(8, 4)
    torch.testing.assert_close(out(x), ref(x), rtol=1e-6, atol=1e-6)
    out(x).sum().backward()
    ref(x).sum().backward()
    for a, b in zip(out.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    opt.step()  # updates the converted model's parameters
    assert not torch.equal(out[0].weight, ref[0].weight)


def test_convert_keeps_hooks_and_mode() -> None:
    lin = nn.Linear(3, 2).eval()
    seen = []
    lin.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    twin = manualgrad.convert(lin)
    assert isinstance(twin, mnn.Linear) and not twin.training
    twin(torch.randn(4, 3))
    assert seen == [torch.Size([4, 2])]


def test_hand_composed_layers_keep_tensor_hooks_and_retain_grad() -> None:
    """Each hand-composed layer is its own node, so a hook or ``retain_grad`` on a layer's output sees
    the gradient there, as with torch.nn's layers (the backward nodes call ``backward`` straight)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    mine = nn.Sequential(*[manualgrad.convert(copy.deepcopy(m)) for m in ref])
    assert isinstance(mine[0], mnn.Linear) and isinstance(mine[1], mnn.ReLU)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    results = []
    for model, loss in ((ref, nn.CrossEntropyLoss()), (mine, mnn.CrossEntropyLoss())):
        seen: list[torch.Tensor] = []
        h = model[0](x)
        h.retain_grad()
        h.register_hook(lambda g, seen=seen: seen.append(g.clone()))
        loss(model[2](model[1](h)), y).backward()
        results.append((h.grad, seen[0], *(p.grad for p in model.parameters())))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_graph_contains_only_manualgrad_nodes() -> None:
    model = manualgrad.convert(
        nn.Sequential(
            nn.Linear(4, 6),
            nn.ReLU(),
            nn.Linear(6, 6),
            nn.Sigmoid(),
            nn.Linear(6, 3),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(3, 2),
            nn.PReLU(),
        )
    )
    y = model(torch.randn(5, 4))
    assert foreign_nodes(y) == []
    bil = mnn.Bilinear(3, 2, 4)
    assert foreign_nodes(bil(torch.randn(5, 3), torch.randn(5, 2))) == []
    # and the walker does see native nodes
    assert foreign_nodes(nn.Linear(4, 2)(torch.randn(3, 4))) == ["AddmmBackward0", "TBackward0"]
