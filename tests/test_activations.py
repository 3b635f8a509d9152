"""Every registry activation, PReLU and Dropout: gradients, parity with torch.nn, module twins.

The cases are generated from :data:`manualgrad.activations.ACTIVATIONS`: a new entry gets every
test here without a line of test code.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import manualgrad
import manualgrad.functional as MF
import manualgrad.nn as mnn
from manualgrad.activations import ACTIVATIONS, Activation

CASES = [
    pytest.param(act, params, id="-".join([act.name, *map(str, params)]))
    for act in ACTIVATIONS.values()
    for params in act.examples
]
INPLACE_CASES = [c for c in CASES if c.values[0].inplace]  # type: ignore[union-attr]


def native(act: Activation, params: tuple[Any, ...], inplace: bool = False) -> nn.Module:
    kwargs = {"inplace": True} if inplace else {}
    return getattr(nn, act.module)(*params, **kwargs)


def twin(act: Activation, params: tuple[Any, ...], inplace: bool = False) -> nn.Module:
    kwargs = {"inplace": True} if inplace else {}
    return getattr(mnn, act.module)(*params, **kwargs)


def sample(act: Activation, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    lo, hi = act.sample
    return torch.rand(*shape, dtype=dtype) * (hi - lo) + lo


def edge_inputs(act: Activation, dtype: torch.dtype) -> torch.Tensor:
    """Random values, every kink exactly, and large magnitudes."""
    special = [*act.kinks, 0.0, -0.0, 1e4, -1e4, 30.0, -30.0, 1e-7, -1e-7]
    return torch.cat([sample(act, 64, dtype=dtype), torch.tensor(special, dtype=dtype)])


# torch's own derivative at a kink where it changed between torch versions; manualgrad keeps the
# current one. Hardswish at ±3: torch 2.6 and earlier take the middle piece on the closed [-3, 3]
# (−0.5 and 1.5 there); from 2.7 on (pytorch/pytorch#148049, tested here on 2.14) 0 at −3 and 1 at 3.
OLD_HARDSWISH_KINKS = torch.__version__ < (2, 7)


def current_kinks(act: Activation, x: torch.Tensor, g: torch.Tensor, gx_ref: torch.Tensor) -> torch.Tensor:
    """torch's gradient ``gx_ref`` with the kink values of the torch releases manualgrad follows (above)."""
    if act.name == "hardswish" and OLD_HARDSWISH_KINKS:
        at = (x == -3.0) | (x == 3.0)
        assert torch.equal(gx_ref[at], (g * (x / 3.0 + 0.5))[at])  # torch <= 2.6's values, as said above
        gx_ref = torch.where(x == -3.0, 0.0, torch.where(x == 3.0, g, gx_ref))
    return gx_ref


def grads_of(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None = None, create_graph: bool = False):
    """The output and dC/dx; ``create_graph`` runs the backward in grad mode (the general formulas,
    not the plain first-order ones)."""
    x = x.detach().clone().requires_grad_()
    y = module(x * 1.0 if getattr(module, "inplace", False) else x)
    g = torch.ones_like(y) if grad_out is None else grad_out
    (gx,) = torch.autograd.grad(y, x, g, create_graph=create_graph)
    return y.detach(), gx.detach()


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize(("act", "params"), CASES)
def test_gradcheck(act: Activation, params: tuple[Any, ...]) -> None:
    z = sample(act, 4, 5).requires_grad_()
    fn = lambda z: MF.activation(z, act, *params)  # noqa: E731
    assert gradcheck(fn, (z,), check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(fn, (z,), check_fwd_over_rev=True, check_rev_over_rev=True)


@pytest.mark.parametrize(("act", "params"), INPLACE_CASES)
def test_gradcheck_inplace(act: Activation, params: tuple[Any, ...]) -> None:
    z = sample(act, 4, 5).requires_grad_()
    fn = lambda z: MF.activation(z.clone(), act, *params, inplace=True)  # noqa: E731
    assert gradcheck(fn, (z,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (z,))


# --- parity with torch.nn ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("act", "params"), CASES)
def test_parity_random_and_edges(act: Activation, params: tuple[Any, ...], dtype: torch.dtype) -> None:
    x = edge_inputs(act, dtype)
    g = torch.randn_like(x)
    y_ref, gx_ref = grads_of(native(act, params), x, g)
    gx_ref = current_kinks(act, x, g, gx_ref)
    y, gx = grads_of(twin(act, params), x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref, equal_nan=True)


@pytest.mark.parametrize(("act", "params"), CASES)
def test_kinks_match_torch_exactly(act: Activation, params: tuple[Any, ...]) -> None:
    """At a kink torch picks one side's derivative; manualgrad picks the same."""
    x = torch.tensor([*act.kinks, 0.0], dtype=torch.float64)
    _, gx_ref = grads_of(native(act, params), x)
    gx_ref = current_kinks(act, x, torch.ones_like(x), gx_ref)
    _, gx = grads_of(twin(act, params), x)
    # the same side of every kink; values to 1e-7 (torch's f64 hardsigmoid uses a float32 1/6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-7, atol=0)


NAN, INF = float("nan"), float("inf")


def nonfinite_inputs(act: Activation, dtype: torch.dtype) -> torch.Tensor:
    """64 values (every element in torch's vectorised loop): random ones, NaN, ±inf and ±1e4."""
    g = torch.Generator().manual_seed(0)
    lo, hi = act.sample
    x = torch.rand(64, generator=g, dtype=dtype) * (hi - lo) + lo
    special = torch.tensor([NAN, NAN, INF, INF, -INF, -INF, 1e4, -1e4, NAN, 0.0], dtype=dtype)
    x[torch.randperm(64, generator=g)[:10]] = special
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("act", "params"), CASES)
def test_nan_and_inf_inputs_match_torch(act: Activation, params: tuple[Any, ...], dtype: torch.dtype) -> None:
    """NaN and ±inf inputs (and NaN in grad_output): torch's outputs and gradients, in place too.

    Where torch's CPU kernel and its scalar tail disagree (a NaN input to hardtanh, relu6, the
    shrinks, the ELUs: 0 or NaN in the vectorised loop, dC/da in the last few elements), manualgrad
    gives the vectorised loop's value, what all but a tensor's last few elements get; the 64 inputs
    here all run in that loop. ReLU and Threshold pass dC/da at a NaN, as torch's threshold_backward
    everywhere. Two deliberate divergences: :func:`test_softsign_at_infinity_is_the_limit`, and a
    NaN dC/da on a dead ReLU unit, which stays NaN (the derivative is a float product, not a bool-mask
    select: many times faster) where torch's threshold_backward gives 0.
    (An infinite grad_output is not covered: manualgrad's fused forms such as tanh's g − (g·a)·a give
    NaN where torch's g·(1 − a²) gives ±inf.)
    """
    x = nonfinite_inputs(act, dtype)
    g = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=dtype)
    g[::9] = NAN
    negative_slope = act.name == "leaky_relu" and params[0] < 0  # torch refuses it in place
    for inplace, create_graph in itertools.product(
        (False, True) if act.inplace and not negative_slope else (False,), (False, True)
    ):
        y_ref, gx_ref = grads_of(native(act, params, inplace), x, g)
        y, gx = grads_of(twin(act, params, inplace), x, g, create_graph)
        if act.name == "softsign":
            gx_ref = torch.where(
                x.isinf(), g * 0.0, gx_ref
            )  # 0 (NaN for a NaN g): test_softsign_at_infinity_is_the_limit
        if act.name == "relu":  # a NaN dC/da on a dead unit stays NaN (dC/da ⊙ 0, float kernels), torch gives 0
            gx_ref = torch.where(g.isnan() & (x <= 0), g, gx_ref)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(gx, gx_ref, equal_nan=True)


PLAIN = [
    pytest.param(act, variant, id=f"{act.name}-{variant}")
    for act in ACTIVATIONS.values()
    for variant in ("grad_", "grad_plain")
    if getattr(act, variant) is not None
]


@pytest.mark.parametrize(("act", "variant"), PLAIN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_plain_formulas_equal_grad(act: Activation, variant: str, dtype: torch.dtype) -> None:
    """The speed variants (``grad_`` may overwrite dC/da, ``grad_plain`` for plain first order) give
    ``grad``'s values bit for bit, on kinks, NaN and ±inf too, and ``grad_plain`` leaves dC/da as it was."""
    z = torch.cat([sample(act, 200, dtype=dtype), edge_inputs(act, dtype), nonfinite_inputs(act, dtype)])
    for params in (act.defaults, *act.variants):  # every variant of the params (gelu's 'tanh', ...)
        saved = act.forward(z, *params) if act.saves == "output" else z
        g = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        g[::7] = NAN
        expected = act.grad(g, saved, *params)
        g_before = g.clone()
        with torch.no_grad():
            got = getattr(act, variant)(g.clone() if variant == "grad_" else g, saved, *params)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(g, g_before, rtol=0, atol=0, equal_nan=True)


def test_softsign_at_infinity_is_the_limit() -> None:
    """Softsign'(±inf): manualgrad's 1/(1 + |z|)² gives 0, the limit of σ'(z) as |z| → ∞; torch
    differentiates its composite z/(1 + |z|) op by op, inf/inf, and gives NaN. manualgrad keeps
    the limit: a finite gradient for a saturated unit, as tanh and sigmoid give."""
    x = torch.tensor([INF, -INF, 3.0], dtype=torch.float64)
    g = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    _, gx = grads_of(mnn.Softsign(), x, g)
    _, gx_ref = grads_of(nn.Softsign(), x, g)
    assert gx[:2].tolist() == [0.0, 0.0] and gx_ref[:2].isnan().all()
    torch.testing.assert_close(gx[2], gx_ref[2])


LAYOUTS = {
    "empty-batch": lambda a: sample(a, 0, 3),
    "unbatched": lambda a: sample(a, 5),
    "3d": lambda a: sample(a, 2, 3, 4),
    "non-contiguous": lambda a: sample(a, 6, 4).t(),
    "strided": lambda a: sample(a, 4, 8)[:, ::2],
}
GRAD_LAYOUTS = {
    "contiguous": lambda y: torch.randn_like(y),
    "non-contiguous": lambda y: torch.randn(*reversed(y.shape), dtype=y.dtype).permute(*reversed(range(y.dim()))),
    "expanded": lambda y: torch.randn(1, dtype=y.dtype).expand(y.shape),
}


@pytest.mark.parametrize("glayout", list(GRAD_LAYOUTS), ids=[f"grad-{k}" for k in GRAD_LAYOUTS])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=list(ACTIVATIONS))
def test_layouts(act: Activation, layout: str, glayout: str) -> None:
    params = act.examples[0]
    x = LAYOUTS[layout](act)
    g = GRAD_LAYOUTS[glayout](native(act, params)(x))
    y_ref, gx_ref = grads_of(native(act, params), x, g)
    y, gx = grads_of(twin(act, params), x, g)
    assert y.shape == y_ref.shape and gx.shape == x.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref)


@pytest.mark.parametrize(("act", "params"), INPLACE_CASES)
def test_inplace_matches_torch(act: Activation, params: tuple[Any, ...]) -> None:
    if act.name == "leaky_relu" and params[0] < 0:
        pytest.skip("torch refuses in-place leaky_relu with a negative slope in backward")
    x = sample(act, 3, 4).requires_grad_()
    g = torch.randn(3, 4, dtype=x.dtype)
    h = x * 1.0
    out = twin(act, params, inplace=True)(h)
    assert out is h  # modified in place, like torch
    (gx,) = torch.autograd.grad(out, x, g)
    h_ref = x * 1.0
    out_ref = native(act, params, inplace=True)(h_ref)
    (gx_ref,) = torch.autograd.grad(out_ref, x, g)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref)


def test_inplace_on_leaf_is_refused_like_torch() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        mnn.ReLU(inplace=True)(x)


# --- the module twins ------------------------------------------------------------------------


def _signature(cls: type) -> list[tuple[str, Any]]:
    sig = inspect.signature(cls)
    params = [(p.name, p.default) for p in sig.parameters.values()]
    return [] if [n for n, _ in params] == ["args", "kwargs"] else params


@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=list(ACTIVATIONS))
def test_module_signature_matches_torch(act: Activation) -> None:
    assert _signature(getattr(mnn, act.module)) == _signature(getattr(nn, act.module))


@pytest.mark.parametrize(("act", "params"), CASES)
def test_module_repr_state_dict_and_convert(act: Activation, params: tuple[Any, ...]) -> None:
    for inplace in (False, True) if act.inplace else (False,):
        ref, mine = native(act, params, inplace), twin(act, params, inplace)
        assert repr(mine) == repr(ref)
        assert mine.state_dict().keys() == ref.state_dict().keys()
        converted = manualgrad.convert(native(act, params, inplace))
        assert type(converted) is type(mine)
        assert repr(converted) == repr(ref)
        x = sample(act, 7, dtype=torch.float32)
        torch.testing.assert_close(converted(x.clone()), ref(x.clone()), rtol=0, atol=0)


def test_module_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="expected max_val > min_val"):
        mnn.Hardtanh(2.0, 1.0)
    with pytest.raises(ValueError, match=r"approximate to be 'none' or 'tanh'.*'tan'"):
        mnn.GELU("tan")
    with pytest.raises(ValueError, match="lambd to be non-negative"):
        mnn.Softshrink(-1.0)
    with pytest.raises(TypeError, match="missing 2 required positional arguments"):
        mnn.Threshold()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="argument 'input' must be Tensor, not list"):
        mnn.ReLU()([1.0])  # type: ignore[arg-type]


def test_hardtanh_deprecated_aliases_warn_like_torch() -> None:
    with pytest.warns(UserWarning, match="min_value` is deprecated"):
        m = mnn.Hardtanh(min_value=-2.0)
    assert m.min_val == -2.0 and repr(m) == repr(nn.Hardtanh(-2.0))


# --- PReLU -----------------------------------------------------------------------------------

PRELU_CASES = [
    pytest.param(1, (6,), id="shared-unbatched"),
    pytest.param(4, (2, 4, 3), id="per-channel-3d"),
    pytest.param(1, (4, 3), id="shared-2d"),
    pytest.param(3, (4, 3), id="per-channel-2d"),
    pytest.param(3, (2, 3, 4, 5), id="per-channel-4d"),
    pytest.param(3, (0, 3), id="per-channel-empty"),
]


@pytest.mark.parametrize(("num", "shape"), PRELU_CASES)
def test_prelu(num: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.rand(num, dtype=torch.float64, requires_grad=True)
    assert gradcheck(MF.prelu, (x, w), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(MF.prelu, (x, w))
    ref, mine = nn.PReLU(num, dtype=torch.float64), mnn.PReLU(num, dtype=torch.float64)
    assert repr(mine) == repr(ref) and torch.equal(mine.weight, ref.weight)
    g = torch.randn(*shape, dtype=torch.float64)
    y, y_ref = mine(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    got = torch.autograd.grad(y, (x, mine.weight), g)
    want = torch.autograd.grad(y_ref, (x, ref.weight), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_prelu_signature_state_dict_convert() -> None:
    assert _signature(mnn.PReLU) == _signature(nn.PReLU)
    ref = nn.PReLU(4, init=0.1)
    mine = mnn.PReLU(4)
    mine.load_state_dict(ref.state_dict())
    assert torch.equal(mine.weight, ref.weight)
    conv = manualgrad.convert(ref)
    assert isinstance(conv, mnn.PReLU) and conv.weight is ref.weight
    with pytest.raises(RuntimeError, match=r"one per channel \(5 channels.*weight of shape \[4\]"):
        mine(torch.randn(2, 5))


# --- Dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_draws_torch_mask_and_gradient(p: float) -> None:
    x = torch.randn(16, 8, requires_grad=True)
    g = torch.randn(16, 8)
    torch.manual_seed(7)
    y = mnn.Dropout(p)(x)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.manual_seed(7)
    y_ref = nn.Dropout(p)(x)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)


def test_dropout_gradcheck_eval_and_module() -> None:
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same mask on every call
        return MF.dropout(x, 0.4)

    assert gradcheck(fn, (x,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (x,))
    m = mnn.Dropout(0.4).eval()
    assert m(x) is x
    assert repr(mnn.Dropout(0.2, True)) == repr(nn.Dropout(0.2, True))
    assert _signature(mnn.Dropout) == _signature(nn.Dropout)
    with pytest.raises(ValueError, match=r"dropout probability has to be between 0 and 1, but got 1.5"):
        mnn.Dropout(1.5)


def test_dropout_inplace() -> None:
    x = torch.randn(8, 8, requires_grad=True)
    h = x * 1.0
    torch.manual_seed(1)
    out = mnn.Dropout(0.5, inplace=True)(h)
    assert out is h
    (gx,) = torch.autograd.grad(out.sum(), x)
    torch.manual_seed(1)
    ref = nn.Dropout(0.5, inplace=True)(x * 1.0)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)
