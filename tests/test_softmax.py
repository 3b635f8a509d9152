"""Softmax family and GLU: gradcheck/gradgradcheck, parity with torch, modules, autocast, errors."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import manualgrad
import manualgrad.functional as MF
import manualgrad.nn as mnn
from tests.helpers import assert_all_ref, assert_ref, second_order, tangent_of

CASES = [
    *(
        pytest.param(fn, shape, kw, id=f"{fn}-{'x'.join(map(str, shape)) or 'scalar'}-{kw}")
        for fn in ("softmax", "softmin", "log_softmax")
        for shape, kw in (
            ((3, 4), {"dim": 1}),
            ((3, 4), {"dim": 0}),
            ((2, 3, 2), {"dim": -1}),
            ((5,), {"dim": 0}),
            ((), {"dim": 0}),
            ((3, 4), {"dim": 1, "dtype": torch.float64}),
        )
    ),
    pytest.param("glu", (3, 4), {"dim": 1}, id="glu-dim1"),
    pytest.param("glu", (4, 3), {"dim": 0}, id="glu-dim0"),
    pytest.param("glu", (2, 3, 6), {}, id="glu-default-dim"),
    pytest.param("glu", (2,), {}, id="glu-1d"),
]


@pytest.mark.parametrize(("fn", "shape", "kw"), CASES)
def test_gradcheck(fn: str, shape: tuple[int, ...], kw: dict[str, Any]) -> None:
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    f = lambda t: getattr(MF, fn)(t, **kw)  # noqa: E731
    assert gradcheck(f, (x,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(f, (x,), check_batched_grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("fn", "shape", "kw"), CASES)
def test_parity(fn: str, shape: tuple[int, ...], kw: dict[str, Any], dtype: torch.dtype) -> None:
    x = torch.randn(shape, dtype=dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = getattr(MF, fn)(a, **kw), getattr(F, fn)(b, **kw)
    assert ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref)
    go = torch.randn(ref.shape, dtype=ref.dtype)
    ga, gb = torch.autograd.grad(ours, a, go)[0], torch.autograd.grad(ref, b, go)[0]
    assert ga.dtype == gb.dtype
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("fn", ["softmax", "softmin", "log_softmax", "glu"])
def test_edges(fn: str) -> None:
    """Large logits, non-contiguous input, expanded grad_output, empty batch."""
    big = torch.tensor([[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 1e4, -3.0]])
    for x in (big, torch.randn(4, 6).t(), torch.randn(0, 4)):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, ref = getattr(MF, fn)(a, dim=1), getattr(F, fn)(b, dim=1)
        torch.testing.assert_close(ours, ref)
        go = torch.ones(()).expand(ref.shape)  # stride 0
        torch.testing.assert_close(torch.autograd.grad(ours, a, go)[0], torch.autograd.grad(ref, b, go)[0])


def test_implicit_dim_matches_torch() -> None:
    for fn in ("softmax", "softmin", "log_softmax"):
        for shape in ((), (4,), (2, 3), (2, 3, 4), (2, 3, 4, 5)):
            x = torch.randn(shape)
            with pytest.warns(UserWarning, match="Implicit dimension choice") as rec:
                ours = getattr(MF, fn)(x)
            assert rec[0].filename == __file__  # the warning points at the caller, as torch's
            with pytest.warns(UserWarning, match="Implicit dimension choice"):
                ref = getattr(F, fn)(x)
            torch.testing.assert_close(ours, ref)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        torch.testing.assert_close(mnn.Softmax()(torch.ones(2, 2)), torch.full((2, 2), 0.5))


def test_vmap() -> None:
    x = torch.randn(5, 3, 4)
    for fn in ("softmax", "log_softmax", "glu"):
        ours = torch.func.vmap(torch.func.grad(lambda t, f=fn: getattr(MF, f)(t, dim=-1).pow(2).sum()))(x)
        ref = torch.func.vmap(torch.func.grad(lambda t, f=fn: getattr(F, f)(t, dim=-1).pow(2).sum()))(x)
        torch.testing.assert_close(ours, ref)


def test_graph_has_only_manualgrad_nodes() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    for fn, name in (
        ("softmax", "SoftmaxBackward"),
        ("softmin", "SoftminBackward"),
        ("log_softmax", "LogSoftmaxBackward"),
        ("glu", "GLUBackward"),
    ):
        out = getattr(MF, fn)(x, dim=1)
        assert out.grad_fn.name() == name
        nexts = [n.name() for n, _ in out.grad_fn.next_functions]
        assert nexts == ["torch::autograd::AccumulateGrad"]


@pytest.mark.parametrize("fn", ["softmax", "softmin", "log_softmax", "glu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_autocast_bf16(fn: str, dtype: torch.dtype) -> None:
    results = []
    for mod in (F, MF):
        x = torch.randn(3, 4, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = getattr(mod, fn)(x, dim=1)
        out.float().sum().backward()
        results.append((out.dtype, x.grad.dtype))  # type: ignore[union-attr]
    assert results[1] == results[0]


def test_errors_match_torch() -> None:
    for args in ((torch.randn(3, 3), 1), (torch.tensor(1.0),), (torch.randn(2), 3)):
        with pytest.raises(Exception) as ref:
            F.glu(*args)
        with pytest.raises(type(ref.value)) as ours:
            MF.glu(*args)
        assert str(ours.value) == str(ref.value)
    with pytest.raises(IndexError) as ref_idx:
        F.softmax(torch.randn(2, 3), dim=2)
    with pytest.raises(IndexError) as ours_idx:
        MF.softmax(torch.randn(2, 3), dim=2)
    assert str(ours_idx.value) == str(ref_idx.value)


MODULES = [
    pytest.param("Softmax", {"dim": 1}, id="Softmax"),
    pytest.param("Softmax", {}, id="Softmax-no-dim"),
    pytest.param("Softmin", {"dim": 0}, id="Softmin"),
    pytest.param("LogSoftmax", {"dim": -1}, id="LogSoftmax"),
    pytest.param("GLU", {}, id="GLU"),
    pytest.param("GLU", {"dim": 0}, id="GLU-dim0"),
]


@pytest.mark.filterwarnings("ignore:Implicit dimension choice:UserWarning")
@pytest.mark.parametrize(("cls", "kw"), MODULES)
def test_module_twin(cls: str, kw: dict[str, Any]) -> None:
    ref, ours = getattr(nn, cls)(**kw), getattr(mnn, cls)(**kw)
    assert repr(ours) == repr(ref)
    assert vars(ours).keys() == vars(ref).keys()
    assert type(ours).__constants__ == type(ref).__constants__
    params = lambda c: [(p.name, p.default, p.kind) for p in inspect.signature(c).parameters.values()]  # noqa: E731
    assert params(type(ours)) == params(type(ref))
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6)
    torch.testing.assert_close(ours(x), ref(x))
    converted = manualgrad.convert(ref)
    assert type(converted) is type(ours)
    torch.testing.assert_close(converted(x), ref(x))


def test_functional_signatures_match_torch() -> None:
    for name in ("softmax", "softmin", "log_softmax", "glu"):
        ours, ref = inspect.signature(getattr(MF, name)), inspect.signature(getattr(F, name))
        assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
            (p.name, p.default, p.kind) for p in ref.parameters.values()
        ], name


# --- references: torch's forward AD and double backward, NaN/±inf ------------------------------


@pytest.mark.parametrize(("fn", "shape", "kw"), CASES)
def test_forward_ad_and_double_backward_match_torch(fn: str, shape: tuple[int, ...], kw: dict[str, Any]) -> None:
    """Against torch's own forward AD and double backward in float64 at rtol 1e-7."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    dx = torch.randn_like(x)
    assert_ref(
        tangent_of(lambda t: getattr(MF, fn)(t, **kw), [x], [dx]),
        tangent_of(lambda t: getattr(F, fn)(t, **kw), [x], [dx]),
    )
    assert_all_ref(
        second_order(lambda t: getattr(MF, fn)(t, **kw), [x]), second_order(lambda t: getattr(F, fn)(t, **kw), [x])
    )


@pytest.mark.parametrize("fn", ["softmax", "softmin", "log_softmax", "glu"])
def test_nan_and_inf_inputs_match_torch(fn: str) -> None:
    """NaN and ±inf logits: torch's outputs and gradients (a NaN in a slice makes the slice NaN)."""
    x = torch.randn(4, 16, dtype=torch.float64)
    x[0, 3], x[1, 5], x[1, 9], x[2, 0], x[3, 15] = float("nan"), float("inf"), float("-inf"), float("-inf"), 1e4
    go = torch.randn(4, 16 if fn != "glu" else 8, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = getattr(MF, fn)(a, dim=1), getattr(F, fn)(b, dim=1)
    torch.testing.assert_close(ours, ref, equal_nan=True)
    ga, gb = torch.autograd.grad(ours, a, go)[0], torch.autograd.grad(ref, b, go)[0]
    torch.testing.assert_close(ga, gb, equal_nan=True)
