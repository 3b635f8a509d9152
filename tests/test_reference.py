"""Every gradient path against an independent reference, at tolerances that a 1e-4 relative error fails.

The other test files check manualgrad's formulas one by one, and some compare manualgrad with itself
(compiled against eager, fused against unfused): a formula both sides share passes those. Here each
path meets a reference that shares nothing with manualgrad's formulas, torch's own autograd on the
torch.nn twin, or explicit float64 arithmetic:

* forward AD with tangents on inputs *and* parameters (Linear, the dense stack for every activation,
  Bilinear, PReLU, every activation, in place too), float64 at rtol 1e-7;
* reverse mode and double backward of the dense stack (every activation, the in-place ``grad_``
  variants included), Bilinear, PReLU and every activation, float64 at rtol 1e-7;
* the compiled kernels (the dense stack's forward and backward graphs, the activation derivative
  kernels, the cross-entropy kernel), compiled at first use, in float32 against float64 torch at
  rtol 1e-5;
* the bf16 save mode against the same computation in float64 from the bf16-rounded saved tensors,
  eager and compiled, at rtol 1e-5.

The losses' and the softmax family's references (forward AD, double backward, the weighted losses'
weight gradients, NaN/±inf inputs) are in ``test_loss.py`` and ``test_softmax.py``, the activations'
NaN/±inf inputs in ``test_activations.py``. ``make mutants`` (``scripts/mutants.py``) checks that the
fast suite fails on small deliberate errors in each of these paths.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manualgrad.functional as MF
import manualgrad.nn as mnn
from manualgrad.activations import ACTIVATIONS, Activation
from manualgrad.functional.dense import DenseStack
from manualgrad.fusion import FUSION
from tests.helpers import assert_all_ref, assert_ref, second_order, tangent_of

f64 = torch.float64


def native(act: Activation, params: tuple[Any, ...]) -> nn.Module:
    return getattr(nn, act.module)(*params)


def sample(act: Activation, *shape: int, dtype: torch.dtype = f64) -> Tensor:
    lo, hi = act.sample
    return torch.rand(*shape, dtype=dtype) * (hi - lo) + lo


def _bf16(t: Tensor) -> Tensor:
    """``t`` rounded to bfloat16, in float64."""
    return t.to(torch.bfloat16).to(f64)


def act_cases() -> list[Any]:
    return [
        pytest.param(act, params, id="-".join([act.name, *map(str, params)]))
        for act in ACTIVATIONS.values()
        for params in act.examples
    ]


ACT_CASES = act_cases()
INPLACE_CASES = [c for c in ACT_CASES if c.values[0].inplace]  # type: ignore[union-attr]
TANGENTS = ["all", "input", "weight", "bias"]


def _which(primals: Sequence[Tensor], names: Sequence[str], which: str) -> list[Tensor | None]:
    """Random tangents on the arguments ``which`` names (``all``: every one), ``None`` elsewhere."""
    return [torch.randn_like(p) if which in ("all", n) else None for p, n in zip(primals, names, strict=True)]


# ---------------------------------------------------------------------------------------------
# Linear.
# ---------------------------------------------------------------------------------------------

LINEAR_SHAPES = [pytest.param((5, 3), id="2d"), pytest.param((2, 4, 3), id="3d"), pytest.param((3,), id="unbatched")]


@pytest.mark.parametrize("which", TANGENTS)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_forward_ad(shape: tuple[int, ...], which: str) -> None:
    """dz = dX Wᵀ + X dWᵀ + db, each term alone and all together, against torch's forward AD."""
    primals = [torch.randn(*shape, dtype=f64), torch.randn(4, 3, dtype=f64), torch.randn(4, dtype=f64)]
    tangents = _which(primals, ["input", "weight", "bias"], which)
    assert_ref(tangent_of(MF.linear, primals, tangents), tangent_of(F.linear, primals, tangents))


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_double_backward(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True)
    assert_all_ref(second_order(MF.linear, (x, w, b)), second_order(F.linear, (x, w, b)))


# ---------------------------------------------------------------------------------------------
# The fused dense stack: Linear → σ → Linear → σ (the last activation's output is the stack's).
# ---------------------------------------------------------------------------------------------


def _stack_params(widths: Sequence[int], dtype: torch.dtype = f64) -> list[Tensor]:
    params: list[Tensor] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        params += [torch.randn(fan_out, fan_in, dtype=dtype) / fan_in**0.5, torch.randn(fan_out, dtype=dtype)]
    return params


def _stack_fns(act: Activation, params: tuple[Any, ...]) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(manualgrad's dense stack, torch's layers) as functions of ``(x, w1, b1, w2, b2)``."""
    plan = ((act, params), (act, params))
    module = native(act, params)

    def mine(x: Tensor, *p: Tensor) -> Tensor:
        return MF.dense_stack(x, plan, ((p[0], p[1]), (p[2], p[3])))

    def ref(x: Tensor, *p: Tensor) -> Tensor:
        return module(F.linear(module(F.linear(x, p[0], p[1])), p[2], p[3]))

    return mine, ref


@pytest.mark.parametrize("which", ["all", "input", "weight"])
@pytest.mark.parametrize(("act", "params"), ACT_CASES)
def test_dense_stack_forward_ad(act: Activation, params: tuple[Any, ...], which: str) -> None:
    mine, ref = _stack_fns(act, params)
    primals = [sample(act, 6, 4), *_stack_params([4, 5, 3])]
    names = ["input", "weight", "bias", "weight", "bias"]
    tangents = _which(primals, names, which)
    assert_ref(tangent_of(mine, primals, tangents), tangent_of(ref, primals, tangents))


@pytest.mark.parametrize(("act", "params"), ACT_CASES)
def test_dense_stack_backward_and_double_backward(act: Activation, params: tuple[Any, ...]) -> None:
    """Eager first order (the in-place ``grad_`` on the hidden layers' δ) and double backward (the
    hidden outputs' gradients, ``grad_hidden``), 2-D and 3-D input."""
    mine, ref = _stack_fns(act, params)
    for x in (sample(act, 6, 4), sample(act, 2, 3, 4)):
        inputs = [x.requires_grad_(), *(p.requires_grad_() for p in _stack_params([4, 5, 3]))]
        y, y_ref = mine(*inputs), ref(*inputs)
        assert_ref(y, y_ref)
        g = torch.randn_like(y)
        assert_all_ref(torch.autograd.grad(y, inputs, g), torch.autograd.grad(y_ref, inputs, g))
        assert_all_ref(second_order(mine, inputs), second_order(ref, inputs))


def test_mlp_module_forward_ad_on_parameters() -> None:
    """``mnn.MLP`` (a fused Sequential) under ``torch.func.jvp`` with tangents on every parameter
    and the input, against the torch.nn twin."""
    from torch.func import functional_call, jvp

    torch.manual_seed(0)
    mine = mnn.MLP(4, [6, 5], 3, activation="gelu", dtype=f64)
    ref = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)).double()
    ref.load_state_dict(mine.state_dict())
    params = {k: v.detach() for k, v in mine.named_parameters()}
    x = torch.randn(7, 4, dtype=f64)
    dp = {k: torch.randn_like(v) for k, v in params.items()}
    dx = torch.randn_like(x)
    got = jvp(lambda p, x: functional_call(mine, p, (x,)), (params, x), (dp, dx))
    want = jvp(lambda p, x: functional_call(ref, p, (x,)), (params, x), (dp, dx))
    assert_all_ref(got, want)


# ---------------------------------------------------------------------------------------------
# Bilinear and PReLU.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["all", "input1", "input2", "weight", "bias"])
def test_bilinear_forward_ad(which: str) -> None:
    primals = [
        torch.randn(4, 3, dtype=f64),
        torch.randn(4, 2, dtype=f64),
        torch.randn(5, 3, 2, dtype=f64),
        torch.randn(5, dtype=f64),
    ]
    tangents = _which(primals, ["input1", "input2", "weight", "bias"], which)
    assert_ref(tangent_of(MF.bilinear, primals, tangents), tangent_of(F.bilinear, primals, tangents))


def test_bilinear_backward_and_double_backward() -> None:
    inputs = [
        torch.randn(2, 4, 3, dtype=f64, requires_grad=True),
        torch.randn(2, 4, 2, dtype=f64, requires_grad=True),
        torch.randn(5, 3, 2, dtype=f64, requires_grad=True),
        torch.randn(5, dtype=f64, requires_grad=True),
    ]
    y, y_ref = MF.bilinear(*inputs), F.bilinear(*inputs)
    g = torch.randn_like(y)
    assert_all_ref(torch.autograd.grad(y, inputs, g), torch.autograd.grad(y_ref, inputs, g))
    assert_all_ref(second_order(MF.bilinear, inputs), second_order(F.bilinear, inputs))


PRELU_SHAPES = [pytest.param(1, (4, 3), id="shared"), pytest.param(3, (2, 3, 4), id="per-channel")]


@pytest.mark.parametrize(("num", "shape"), PRELU_SHAPES)
def test_prelu_forward_ad_backward_and_double_backward(num: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    w = (torch.rand(num, dtype=f64) + 0.1).requires_grad_()
    for which in ("all", "input", "weight"):
        tangents = _which([x, w], ["input", "weight"], which)
        assert_ref(tangent_of(MF.prelu, [x, w], tangents), tangent_of(F.prelu, [x, w], tangents))
    y, y_ref = MF.prelu(x, w), F.prelu(x, w)
    g = torch.randn_like(y)
    assert_all_ref(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g))
    assert_all_ref(second_order(MF.prelu, (x, w)), second_order(F.prelu, (x, w)))


# ---------------------------------------------------------------------------------------------
# Every activation on its own: forward AD and double backward, out of place and in place.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("act", "params"), ACT_CASES)
def test_activation_forward_ad_and_double_backward(act: Activation, params: tuple[Any, ...]) -> None:
    ref = native(act, params)
    z = sample(act, 4, 5).requires_grad_()
    dz = torch.randn_like(z)

    def mine(t: Tensor) -> Tensor:
        return MF.activation(t, act, *params)

    assert_ref(tangent_of(mine, [z], [dz]), tangent_of(ref, [z], [dz]))
    assert_all_ref(second_order(mine, [z]), second_order(ref, [z]))


@pytest.mark.parametrize(("act", "params"), INPLACE_CASES)
def test_inplace_activation_forward_ad_and_double_backward(act: Activation, params: tuple[Any, ...]) -> None:
    """In place (``ElementwiseInplace``): its tangent, and in double backward the gradient that
    reaches the saved copy of z (``grad_z``), alone and with one for the output (``a²`` uses both),
    against torch's out-of-place op."""
    ref = native(act, params)
    z = sample(act, 4, 5).requires_grad_()
    dz = torch.randn_like(z)

    def mine(t: Tensor) -> Tensor:
        return MF.activation(t * 1.0, act, *params, inplace=True)

    assert_ref(tangent_of(mine, [z], [dz]), tangent_of(ref, [z], [dz]))
    assert_all_ref(second_order(mine, [z]), second_order(ref, [z]))
    assert_all_ref(second_order(lambda t: mine(t) ** 2, [z]), second_order(lambda t: ref(t) ** 2, [z]))


# ---------------------------------------------------------------------------------------------
# The bf16 save mode, eager.
# ---------------------------------------------------------------------------------------------

# σ' from the saved output, for the activations whose derivative the stack computes from it
OUTPUT_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": lambda a: (a > 0).to(f64),
    "tanh": lambda a: 1 - a * a,
    "sigmoid": lambda a: a * (1 - a),
}


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "silu"])
def test_bf16_save_mode_matches_float64_from_rounded_tensors(activation: str) -> None:
    """``mnn.MLP(..., save_dtype=torch.bfloat16)``: the gradients torch's formulas give, in float64,
    from the hidden tensors rounded to bfloat16 (z where σ' needs it, a as the next layer's input)."""
    torch.manual_seed(0)
    act = ACTIVATIONS[activation]
    net = mnn.MLP(8, [16, 12], 4, activation=activation, save_dtype=torch.bfloat16)
    x, g = torch.randn(10, 8), torch.randn(10, 4)
    y = net(x)
    got = torch.autograd.grad(y, list(net.parameters()), g)
    # the float32 forward, as torch.nn computes it (the same values manualgrad's forward gives)
    linears = [m for m in net if isinstance(m, mnn.Linear)]
    h, saved_in, saved_s = x, [], []
    for i, lin in enumerate(linears):
        saved_in.append(h.to(f64) if i == 0 else _bf16(h))
        z = F.linear(h, lin.weight.detach(), lin.bias.detach())
        if i == len(linears) - 1:
            h = z
            break
        h = native(act, ())(z)
        saved_s.append(_bf16(z) if act.saves == "input" else _bf16(h))
    torch.testing.assert_close(y, h, rtol=0, atol=0)
    # the backward in float64 from the rounded tensors
    want: list[Tensor] = []
    delta = g.to(f64)
    for i in range(len(linears) - 1, -1, -1):
        lin = linears[i]
        want[:0] = [delta.T @ saved_in[i], delta.sum(0)]
        if i == 0:
            break
        g_a = delta @ lin.weight.detach().to(f64)
        s = saved_s[i - 1]
        if act.saves == "input":
            zs = s.clone().requires_grad_()
            (prime,) = torch.autograd.grad(native(act, ())(zs).sum(), zs)
        else:
            prime = OUTPUT_DERIVATIVES[activation](s)
        delta = g_a * prime
    assert_all_ref(list(got), want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The compiled kernels (compiled at first use), float32, against float64 torch.
# ---------------------------------------------------------------------------------------------

# Linear → GELU (saves z) → Linear → Sigmoid (saves its output, the stack's output)
COMPILED_SIZES = (6, 8, 5)


def _compiled_net(save_dtype: torch.dtype | None = None) -> mnn.Sequential:
    torch.manual_seed(0)
    a, b, c = COMPILED_SIZES
    net = mnn.Sequential(mnn.Linear(a, b), mnn.GELU(), mnn.Linear(b, c), mnn.Sigmoid())
    net.save_dtype = save_dtype
    return net


def _torch_twin(net: nn.Module, dtype: torch.dtype = f64) -> nn.Sequential:
    a, b, c = COMPILED_SIZES
    ref = nn.Sequential(nn.Linear(a, b), nn.GELU(), nn.Linear(b, c), nn.Sigmoid()).to(dtype)
    ref.load_state_dict(net.state_dict())
    return ref


def bf16_reference(net: mnn.Sequential, x: Tensor, g: Tensor) -> list[Tensor]:
    """The gradients ``(x, w1, b1, w2, b2)`` of Linear → GELU → Linear → Sigmoid from what the bf16
    save mode saves: z₁, a₁ and the output rounded to bfloat16 (x and the weights as they are), in
    float64, with explicit formulas (GELU's derivative from torch's autograd).

    z₁, a₁ and the output are the stack's float32 forward (its hidden outputs, which the forward
    test above compares with torch), so that the reference rounds exactly the values the stack rounds.
    """
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    plan = tuple((m.activation, m.act_params()) for m in (net[1], net[3]))
    with torch.no_grad():
        out, z1, a1 = DenseStack.call(x.detach(), plan, None, w1, b1, w2, b2)
    z1_s, a1_s, out_s = _bf16(z1), _bf16(a1), _bf16(out)
    z = z1_s.clone().requires_grad_()
    (gelu_prime,) = torch.autograd.grad(F.gelu(z).sum(), z)
    delta2 = g.to(f64) * out_s * (1 - out_s)  # sigmoid' from its output
    g_a1 = delta2 @ w2.to(f64)
    delta1 = g_a1 * gelu_prime
    return [
        delta1 @ w1.to(f64),
        delta1.T @ x.detach().to(f64),
        delta1.sum(0),
        delta2.T @ a1_s,
        delta2.sum(0),
    ]


def test_compiled_kernels_match_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each compiled path, compiled at first use, in float32 against float64 torch at rtol 1e-5: a 1e-3
    error in any output fails. One test, so that one process compiles the kernels the paths share."""
    results: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    with monkeypatch.context() as mp:
        mp.setattr(FUSION, "patience", 0.0)
        mp.setattr(FUSION, "min_numel", 0)
        mp.setattr(FUSION, "min_numel_simple", 0)
        mp.setattr(FUSION, "enabled", True)
        mp.setattr(FUSION, "dense", True)
        mp.setattr(FUSION, "broken", False)
        mp.setattr(FUSION, "_kernels", {})
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(16, COMPILED_SIZES[0], generator=gen).requires_grad_()
        g = torch.randn(16, COMPILED_SIZES[-1], generator=gen)

        def run(net: nn.Module) -> list[Tensor]:
            y = net(x)
            return [y.detach(), *torch.autograd.grad(y, [x, *net.parameters()], g)]

        net = _compiled_net()
        ref = _torch_twin(net)
        x64 = x.detach().to(f64).requires_grad_()
        y_ref = ref(x64)
        want = [y_ref.detach(), *torch.autograd.grad(y_ref, [x64, *ref.parameters()], g.to(f64))]

        # the dense stack: its backward one compiled graph (its forward stays eager)
        results["dense-stack-forward-backward"] = (run(net), want)
        kinds = {key[0][0] for key in FUSION._kernels}
        assert "dense_backward" in kinds and "dense_forward" not in kinds, kinds

        # the bf16 save mode's backward graph, against the float64 computation from the rounded tensors
        compact = _compiled_net(torch.bfloat16)
        results["dense-stack-bf16-save"] = (run(compact)[1:], bf16_reference(compact, x, g))
        assert sum(key[0][0] == "dense_backward" for key in FUSION._kernels) == 2

        # the activation derivative kernels, layer by layer: into the backward's own δ (GELU, hidden)
        # and into a new tensor (Sigmoid, whose grad_output belongs to autograd)
        mp.setattr(FUSION, "dense", False)
        results["activation-kernels"] = (run(net), want)
        kinds = {key[0] for key in FUSION._kernels}
        assert {("gelu", ("none",), True), ("sigmoid", (), False)} <= kinds, kinds

        # the cross-entropy gradient kernel
        logits = torch.randn(16, 5, generator=gen).requires_grad_()
        target = torch.tensor([0, -100, 4, 2] * 4)
        logits64 = logits.detach().to(f64).requires_grad_()
        results["cross-entropy"] = (
            list(torch.autograd.grad(MF.cross_entropy(logits, target), logits)),
            list(torch.autograd.grad(F.cross_entropy(logits64, target), logits64)),
        )
        assert any(key[0][0] == "cross_entropy" for key in FUSION._kernels)
        assert not FUSION.broken
    for path, (got, want) in results.items():
        try:
            assert_all_ref(got, want, rtol=1e-5)
        except AssertionError as err:
            raise AssertionError(f"{path}: {err}") from None
