"""Linear, the fused dense stack and Bilinear: the spec's dense-layer formulas, checked."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import manualgrad.functional as MF
import manualgrad.nn as mnn
from manualgrad.activations import ACTIVATIONS

f64 = torch.float64

LINEAR_SHAPES = [
    pytest.param((5, 3), id="batch"),
    pytest.param((3,), id="unbatched"),
    pytest.param((2, 4, 3), id="3d"),
    pytest.param((0, 3), id="empty-batch"),
    pytest.param((2, 0, 3), id="empty-inner"),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_gradcheck(shape: tuple[int, ...], bias: bool) -> None:
    x = torch.randn(*shape, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True) if bias else None
    assert gradcheck(
        MF.linear,
        (x, w, b),
        check_forward_ad=True,
        check_batched_grad=True,
        check_batched_forward_grad=True,
    )
    assert gradgradcheck(MF.linear, (x, w, b), check_fwd_over_rev=True)


def test_linear_is_the_spec_formula() -> None:
    """grad_weight = δᵀX summed over every leading dim, grad_bias = Σδ, grad_input = δW."""
    x = torch.randn(2, 5, 3, dtype=f64, requires_grad=True)
    w = torch.randn(4, 3, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True)
    delta = torch.randn(2, 5, 4, dtype=f64)
    gx, gw, gb = torch.autograd.grad(MF.linear(x, w, b), (x, w, b), delta)
    d2, x2 = delta.reshape(-1, 4), x.detach().reshape(-1, 3)
    torch.testing.assert_close(gw, d2.T @ x2)
    torch.testing.assert_close(gb, d2.sum(0))
    torch.testing.assert_close(gx, delta @ w.detach())
    # per sample, as the spec writes it: dC/dW = δ (a^{L-1})ᵀ, dC/da^{L-1} = Wᵀ δ
    per_sample = sum(torch.outer(d2[n], x2[n]) for n in range(d2.shape[0]))
    torch.testing.assert_close(gw, per_sample)
    torch.testing.assert_close(gx.reshape(-1, 3)[3], w.detach().T @ d2[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_parity_with_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    b = torch.randn(4, dtype=dtype, requires_grad=True)
    y, y_ref = MF.linear(x, w, b), F.linear(x, w, b)
    torch.testing.assert_close(y, y_ref)
    for g in (
        torch.randn_like(y),
        torch.randn(1, dtype=dtype).expand(y.shape),
        torch.randn(*reversed(y.shape), dtype=dtype).T if y.dim() == 2 else torch.randn_like(y),
    ):
        got = torch.autograd.grad(y, (x, w, b), g, retain_graph=True)
        want = torch.autograd.grad(y_ref, (x, w, b), g, retain_graph=True)
        for a, c in zip(got, want, strict=True):
            torch.testing.assert_close(a, c)


def test_linear_non_contiguous_input_and_needs_input_grad() -> None:
    x = torch.randn(3, 6, dtype=f64)[:, ::2]  # no grad needed: grad_input is skipped
    w = torch.randn(4, 3, dtype=f64, requires_grad=True)
    y = MF.linear(x, w)
    (gw,) = torch.autograd.grad(y.sum(), (w,))
    torch.testing.assert_close(gw, torch.ones(3, 4, dtype=f64).T @ x)


# --- the fused stack --------------------------------------------------------------------------

STACK_ACTS = [pytest.param(a, id=a.name) for a in ACTIVATIONS.values()]


def _two_layer(act_name: str, fused: bool, dtype: torch.dtype = f64) -> torch.nn.Module:
    torch.manual_seed(0)
    act = ACTIVATIONS[act_name]
    params = act.examples[0]
    layers = [
        mnn.Linear(6, 5, dtype=dtype),
        getattr(mnn, act.module)(*params),
        mnn.Linear(5, 4, dtype=dtype),
        getattr(mnn, act.module)(*params),
        mnn.Linear(4, 3, dtype=dtype),
    ]
    return mnn.Sequential(*layers) if fused else torch.nn.Sequential(*layers)


@pytest.mark.parametrize("act", STACK_ACTS)
def test_fused_stack_gives_identical_gradients(act) -> None:
    x = torch.randn(7, 6, dtype=torch.float32, requires_grad=True)
    g = torch.randn(7, 3)
    results = []
    for fused in (True, False):
        net = _two_layer(act.name, fused, torch.float32)
        y = net(x)
        results.append((y, *torch.autograd.grad(y, (x, *net.parameters()), g)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("act", STACK_ACTS)
def test_fused_stack_gradcheck(act) -> None:
    net = _two_layer(act.name, fused=True)
    x = torch.randn(3, 6, dtype=f64, requires_grad=True)
    params = tuple(net.parameters())

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        flat = tuple(zip(ps[0::2], ps[1::2], strict=True))
        p = act.examples[0]
        plan = ((act, p), (act, p), (None, ()))
        return MF.dense_stack(x, plan, flat)

    torch.testing.assert_close(fn(x, *params), net(x))
    assert gradcheck(fn, (x, *params), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (x, *params))


def test_stack_unbatched_and_3d_input() -> None:
    fused, plain = _two_layer("tanh", True), _two_layer("tanh", False)
    for shape in ((6,), (2, 3, 6), (0, 6)):
        x = torch.randn(*shape, dtype=f64)
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)


def test_sequential_runs_hooked_modules_one_by_one() -> None:
    net = _two_layer("relu", True)
    calls = []
    net[1].register_forward_hook(lambda m, i, o: calls.append("relu"))
    x = torch.randn(4, 6, dtype=f64)
    torch.testing.assert_close(net(x), _two_layer("relu", False)(x), rtol=0, atol=0)
    assert calls == ["relu"]


# --- Bilinear ---------------------------------------------------------------------------------

BILINEAR_SHAPES = [
    pytest.param((4,), id="batch"),
    pytest.param((), id="unbatched"),
    pytest.param((2, 3), id="3d"),
    pytest.param((0,), id="empty"),
]


@pytest.mark.parametrize("lead", BILINEAR_SHAPES)
def test_bilinear(lead: tuple[int, ...]) -> None:
    x1 = torch.randn(*lead, 3, dtype=f64, requires_grad=True)
    x2 = torch.randn(*lead, 2, dtype=f64, requires_grad=True)
    w = torch.randn(5, 3, 2, dtype=f64, requires_grad=True)
    b = torch.randn(5, dtype=f64, requires_grad=True)
    assert gradcheck(MF.bilinear, (x1, x2, w, b), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(MF.bilinear, (x1, x2, w, b))
    y, y_ref = MF.bilinear(x1, x2, w, b), F.bilinear(x1, x2, w, b)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, c in zip(
        torch.autograd.grad(y, (x1, x2, w, b), g),
        torch.autograd.grad(y_ref, (x1, x2, w, b), g),
        strict=True,
    ):
        torch.testing.assert_close(a, c)


# --- compact saved activations (opt-in memory saving) -----------------------------------------


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages saved for backward, parameters excluded."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_bf16_saved_activations(activation: str) -> None:
    torch.manual_seed(0)
    full = mnn.MLP(32, [64, 64], 10, activation=activation)
    compact = mnn.MLP(32, [64, 64], 10, activation=activation, save_dtype=torch.bfloat16)
    compact.load_state_dict(full.state_dict())
    x = torch.randn(16, 32)
    y_full, y_compact = full(x), compact(x)
    assert torch.equal(y_full, y_compact)  # the forward is untouched
    g = torch.randn_like(y_full)
    g_full = torch.autograd.grad(y_full, list(full.parameters()), g)
    g_compact = torch.autograd.grad(y_compact, list(compact.parameters()), g)
    for a, b in zip(g_compact, g_full, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    full_bytes = _saved_bytes(lambda: full(x))
    compact_bytes = _saved_bytes(lambda: compact(x))
    hidden = 16 * 64 * 4 * (2 if activation != "gelu" else 4)  # the a's (and z's) in float32
    assert full_bytes - compact_bytes == hidden // 2


def test_bf16_saved_activations_refuse_double_backward() -> None:
    net = mnn.MLP(4, [8], 2, activation="tanh", save_dtype=torch.bfloat16)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(net(x).sum(), x, create_graph=True)


def test_saves_no_more_than_torch_nn() -> None:
    """Each layer's input (and z only where σ' needs it); the logits are not saved."""
    torch.manual_seed(0)
    for activation, native_act in (("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU), ("sigmoid", torch.nn.Sigmoid)):
        mine = mnn.MLP(32, [64, 64], 10, activation=activation)
        ref = torch.nn.Sequential(
            torch.nn.Linear(32, 64), native_act(), torch.nn.Linear(64, 64), native_act(), torch.nn.Linear(64, 10)
        )
        x = torch.randn(16, 32)
        assert _saved_bytes(lambda m=mine, x=x: m(x)) <= _saved_bytes(lambda m=ref, x=x: m(x)), activation


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["gelu", "silu", "elu", "relu", "tanh", "sigmoid"])
def test_fused_derivative_kernel_matches_eager_formula(activation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """First-order backwards run the registry formula compiled into one loop: the same values, both
    the kernel writing into the backward's own δ (hidden layers) and the one that allocates
    (a lone activation, whose grad_output belongs to someone else)."""
    from manualgrad.fusion import FUSION

    monkeypatch.setattr(FUSION, "min_numel", 0)

    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    monkeypatch.setattr(FUSION, "min_numel_simple", 0)
    monkeypatch.setattr(FUSION, "dense", False)  # the per-layer kernels, not the stack's graph
    torch.manual_seed(0)
    net = mnn.MLP(16, [32], 4, activation=activation)
    x, g = torch.randn(64, 16, requires_grad=True), torch.randn(64, 4)
    lone = getattr(MF, activation)
    g_lone = torch.randn(64, 16)

    def grads() -> list[torch.Tensor]:
        return [
            *torch.autograd.grad(net(x), [x, *net.parameters()], g),
            *torch.autograd.grad(lone(x), x, g_lone),
        ]

    fused = grads()
    monkeypatch.setattr(FUSION, "enabled", False)
    eager = grads()
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not FUSION.broken  # compiled, not fallen back
    kinds = {key[0][2] for key in FUSION._kernels if key[0][0] == ACTIVATIONS[activation].name}
    assert kinds == {True, False}  # both kernels ran


DENSE_GRAPH_CASES = [
    # (activation, hidden sizes, input shape, bias, input requires grad)
    pytest.param("relu", [32, 24], (64, 16), True, False, id="relu-2d"),
    pytest.param("tanh", [32], (4, 16, 16), True, True, id="tanh-3d-grad-input"),
    pytest.param("sigmoid", [32], (64, 16), False, True, id="sigmoid-no-bias"),
    pytest.param("gelu", [32, 32], (64, 16), True, False, id="gelu-saves-z"),
    pytest.param("leaky_relu", [32], (16,), True, True, id="leaky-relu-unbatched"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "hidden", "shape", "bias", "input_grad"), DENSE_GRAPH_CASES)
def test_dense_stack_compiled_graphs_match_op_by_op(
    activation: str,
    hidden: list[int],
    shape: tuple[int, ...],
    bias: bool,
    input_grad: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stack's forward and backward as compiled graphs (``FUSION.dense``): the same outputs and
    gradients as the layers run op by op (to the last bits the fused loops may round differently)."""
    from manualgrad.fusion import FUSION

    monkeypatch.setattr(FUSION, "min_numel", 0)

    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    torch.manual_seed(0)
    net = mnn.MLP(16, hidden, 4, activation=activation, bias=bias)
    x = torch.randn(*shape, requires_grad=input_grad)
    g = torch.randn(*shape[:-1], 4)
    inputs = [x, *net.parameters()] if input_grad else list(net.parameters())

    def run() -> list[torch.Tensor]:
        y = net(x)
        return [y, *torch.autograd.grad(y, inputs, g)]

    monkeypatch.setattr(FUSION, "_kernels", {})  # this test's kernels only
    fused = run()
    kinds = {key[0][0] for key in FUSION._kernels}
    assert "dense_backward" in kinds and "dense_forward" not in kinds  # the backward compiled; the forward stays eager
    monkeypatch.setattr(FUSION, "enabled", False)
    eager = run()
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not FUSION.broken


def test_lone_linear_and_dense_off_stay_op_by_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone Linear is one torch op already, and ``FUSION.dense = False`` turns the graphs off:
    neither compiles a dense graph (and the stack gives exactly the layers' results)."""
    from manualgrad.fusion import FUSION

    monkeypatch.setattr(FUSION, "min_numel", 0)

    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    monkeypatch.setattr(FUSION, "_kernels", {})  # this test's kernels only
    x, w = torch.randn(8, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    MF.linear(x, w).sum().backward()
    monkeypatch.setattr(FUSION, "dense", False)
    net = _two_layer("tanh", fused=True, dtype=torch.float32)
    y = net(x)
    y.sum().backward()
    assert not any(key[0][0].startswith("dense") for key in FUSION._kernels)
    assert torch.equal(y, _two_layer("tanh", fused=False, dtype=torch.float32)(x))


@pytest.mark.slow
def test_fused_kernels_stay_out_of_batched_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """``is_grads_batched`` hands the backward batched tensors that look plain: no fused kernel then."""
    from manualgrad.fusion import FUSION

    monkeypatch.setattr(FUSION, "min_numel", 0)

    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    torch.manual_seed(0)
    net = mnn.MLP(8, [16], 4, activation="gelu")
    x, y = torch.randn(32, 8, requires_grad=True), torch.randint(0, 4, (32,))
    loss = MF.cross_entropy(net(x), y)
    v = torch.randn(3)
    (one,) = torch.autograd.grad(loss, x, retain_graph=True)  # compiles the kernels for these shapes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fused kernels unavailable"
        (batched,) = torch.autograd.grad(loss, x, v, is_grads_batched=True, retain_graph=True)
    torch.testing.assert_close(batched, v.view(3, 1, 1) * one, rtol=1e-5, atol=1e-7)
    assert not FUSION.broken


@pytest.mark.slow
def test_fused_cross_entropy_matches_eager_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-entropy gradient compiled into one kernel: the same values, ignored targets included."""
    from manualgrad.fusion import FUSION

    torch.manual_seed(0)
    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    x, y = torch.randn(16, 5, requires_grad=True), torch.tensor([0, -100, 4, 2] * 4)
    for reduction in ("mean", "sum"):
        monkeypatch.setattr(FUSION, "enabled", True)
        fused = torch.autograd.grad(MF.cross_entropy(x, y, reduction=reduction), x)
        assert any(key[0][0] == "cross_entropy" for key in FUSION._kernels)
        monkeypatch.setattr(FUSION, "enabled", False)
        eager = torch.autograd.grad(MF.cross_entropy(x, y, reduction=reduction), x)
        torch.testing.assert_close(fused, eager)
        torch.testing.assert_close(fused, torch.autograd.grad(F.cross_entropy(x, y, reduction=reduction), x))


# --- torch.func transforms --------------------------------------------------------------------


def test_torch_func_vmap_jacrev_jvp_hessian() -> None:
    """The Functions compose with torch.func (generate_vmap_rule and the forward-AD twin)."""
    from torch.func import hessian, jacfwd, jacrev, jvp, vmap

    torch.manual_seed(0)
    mine = mnn.MLP(3, [5], 2, activation="tanh").double()
    ref = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    ref.load_state_dict(mine.state_dict())
    xs = torch.randn(4, 3, dtype=f64)
    torch.testing.assert_close(vmap(mine)(xs), ref(xs))
    for transform in (jacrev, jacfwd):
        torch.testing.assert_close(vmap(transform(mine))(xs), vmap(transform(ref))(xs))
    t = torch.randn_like(xs)
    for a, b in zip(jvp(mine, (xs,), (t,)), jvp(ref, (xs,), (t,)), strict=True):
        torch.testing.assert_close(a, b)
    scalar = lambda m: lambda x: m(x).sum()  # noqa: E731
    torch.testing.assert_close(hessian(scalar(mine))(xs[0]), hessian(scalar(ref))(xs[0]))
    torch.testing.assert_close(vmap(MF.gelu)(xs), torch.nn.functional.gelu(xs))
