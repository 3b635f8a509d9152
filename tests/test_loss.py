"""Losses: gradcheck/gradgradcheck (forward AD, vmap), parity with torch, modules, errors, autocast."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
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

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")

Maker = Callable[[torch.dtype, torch.Generator], tuple[list[Any], dict[str, Any]]]


def _r(*shape: int, lo: float = -2.0, hi: float = 2.0) -> Callable[[torch.dtype, torch.Generator], torch.Tensor]:
    def make(dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo

    return make


def _idx(*values: Any) -> Callable[[torch.dtype, torch.Generator], torch.Tensor]:
    return lambda dtype, g: torch.tensor(values, dtype=torch.long)


def _probs(*shape: int, dim: int = 1) -> Callable[[torch.dtype, torch.Generator], torch.Tensor]:
    return lambda dtype, g: torch.rand(*shape, generator=g, dtype=dtype).softmax(dim)


def case(
    id: str,
    name: str,
    args: list[Callable[[torch.dtype, torch.Generator], torch.Tensor] | None],
    diff: tuple[int, ...],
    **kwargs: Any,
) -> Any:
    """``name``: the function of both ``F`` and ``MF``; ``args``: makers of the positional tensors
    (``weight``-like tensors go in ``kwargs`` as makers too); ``diff``: positions of args that take a
    gradient in torch (the others must not require grad)."""
    return pytest.param(name, args, diff, kwargs, id=id)


X34 = _r(3, 4)
CASES = [
    # regression losses: input and target differentiable; weight too where torch has one
    *(case(f"mse-{r}", "mse_loss", [X34, X34], (0, 1), reduction=r) for r in ("none", "mean", "sum")),
    case("mse-weight-mean", "mse_loss", [X34, X34], (0, 1), weight=_r(3, 4, lo=0.1)),
    case("mse-weight-none", "mse_loss", [X34, X34], (0, 1), weight=_r(3, 4, lo=0.1), reduction="none"),
    case("mse-broadcast-target", "mse_loss", [X34, _r(4)], (0, 1)),
    case("mse-extra-dims", "mse_loss", [_r(2, 3, 2), _r(2, 3, 2)], (0, 1), reduction="sum"),
    case("mse-legacy-size-average-false", "mse_loss", [X34, X34], (0, 1), size_average=False),
    case("mse-legacy-reduce-false", "mse_loss", [X34, X34], (0, 1), reduce=False),
    *(case(f"l1-{r}", "l1_loss", [X34, X34], (0, 1), reduction=r) for r in ("none", "mean", "sum")),
    case("l1-weight-mean", "l1_loss", [X34, X34], (0, 1), weight=_r(3, 4, lo=0.1)),
    case("l1-weight-sum", "l1_loss", [X34, X34], (0, 1), weight=_r(3, 4, lo=0.1), reduction="sum"),
    *(case(f"huber-{r}", "huber_loss", [X34, X34], (0, 1), reduction=r, delta=0.7) for r in ("none", "mean", "sum")),
    case("huber-weight-mean", "huber_loss", [X34, X34], (0, 1), weight=_r(3, 4, lo=0.1), delta=1.5),
    case(
        "huber-weight-none",
        "huber_loss",
        [X34, X34],
        (0, 1),
        weight=_r(3, 4, lo=0.1),
        reduction="none",
    ),
    *(
        case(f"smooth-l1-{r}", "smooth_l1_loss", [X34, X34], (0, 1), reduction=r, beta=0.5)
        for r in ("none", "mean", "sum")
    ),
    case("smooth-l1-beta0", "smooth_l1_loss", [X34, X34], (0, 1), beta=0.0),
    case("smooth-l1-broadcast", "smooth_l1_loss", [_r(3, 1), X34], (0, 1), reduction="sum"),
    # binary cross entropy: weight and pos_weight take no gradient in torch
    *(
        case(
            f"bce-{r}",
            "binary_cross_entropy",
            [_r(3, 4, lo=0.05, hi=0.95), _r(3, 4, lo=0.0, hi=1.0)],
            (0, 1),
            reduction=r,
        )
        for r in ("none", "mean", "sum")
    ),
    case(
        "bce-weight",
        "binary_cross_entropy",
        [_r(3, 4, lo=0.05, hi=0.95), _r(3, 4, lo=0.0, hi=1.0)],
        (0, 1),
        weight=_r(4, lo=0.1),
    ),
    case(
        "bce-legacy-reduce-false",
        "binary_cross_entropy",
        [_r(3, 4, lo=0.05, hi=0.95), _r(3, 4, lo=0.0, hi=1.0)],
        (0, 1),
        reduce=False,
    ),
    *(
        case(
            f"bce-logits-{r}",
            "binary_cross_entropy_with_logits",
            [X34, _r(3, 4, lo=0.0, hi=1.0)],
            (0, 1),
            reduction=r,
        )
        for r in ("none", "mean", "sum")
    ),
    case(
        "bce-logits-weight-pos-weight",
        "binary_cross_entropy_with_logits",
        [X34, _r(3, 4, lo=0.0, hi=1.0)],
        (0, 1),
        weight=_r(3, 4, lo=0.1),
        pos_weight=_r(4, lo=0.2),
    ),
    case(
        "bce-logits-pos-weight-extra-dims",
        "binary_cross_entropy_with_logits",
        [_r(2, 3, 2), _r(2, 3, 2, lo=0.0, hi=1.0)],
        (0, 1),
        pos_weight=_r(2, lo=0.2),
        reduction="sum",
    ),
    # KL divergence
    *(
        case(f"kl-{r}", "kl_div", [_r(3, 4), _r(3, 4, lo=0.05, hi=1.0)], (0, 1), reduction=r)
        for r in ("none", "mean", "sum", "batchmean")
    ),
    case(
        "kl-log-target-batchmean",
        "kl_div",
        [_r(3, 4), X34],
        (0, 1),
        reduction="batchmean",
        log_target=True,
    ),
    case("kl-log-target-none", "kl_div", [_r(3, 4), X34], (0, 1), reduction="none", log_target=True),
    case("kl-broadcast-target", "kl_div", [_r(3, 4), _r(4, lo=0.05, hi=1.0)], (0, 1), reduction="sum"),
    case(
        "kl-legacy-size-average-false",
        "kl_div",
        [_r(3, 4), _r(3, 4, lo=0.05, hi=1.0)],
        (0, 1),
        size_average=False,
    ),
    # cross entropy: class indices (input only) and class probabilities (input, target, weight)
    *(case(f"ce-index-{r}", "cross_entropy", [X34, _idx(0, 3, 1)], (0,), reduction=r) for r in ("none", "mean", "sum")),
    case("ce-index-weight-mean", "cross_entropy", [X34, _idx(0, 3, 1)], (0,), weight=_r(4, lo=0.1)),
    case("ce-index-ignore-mean", "cross_entropy", [X34, _idx(0, -100, 1)], (0,)),
    case("ce-index-ignore-sum", "cross_entropy", [X34, _idx(-100, 3, 1)], (0,), reduction="sum"),
    case(
        "ce-index-weight-ignore-mean",
        "cross_entropy",
        [X34, _idx(0, -100, 1)],
        (0,),
        weight=_r(4, lo=0.1),
    ),
    case(
        "ce-index-ignore-index-2-none",
        "cross_entropy",
        [X34, _idx(2, 3, 2)],
        (0,),
        ignore_index=2,
        reduction="none",
    ),
    case("ce-index-smoothing-mean", "cross_entropy", [X34, _idx(0, 3, 1)], (0,), label_smoothing=0.2),
    case(
        "ce-index-smoothing-weight-ignore-mean",
        "cross_entropy",
        [X34, _idx(0, -100, 1)],
        (0,),
        weight=_r(4, lo=0.1),
        label_smoothing=0.3,
    ),
    case(
        "ce-index-smoothing-weight-ignore-none",
        "cross_entropy",
        [X34, _idx(0, -100, 1)],
        (0,),
        weight=_r(4, lo=0.1),
        label_smoothing=0.3,
        reduction="none",
    ),
    case(
        "ce-index-smoothing-sum",
        "cross_entropy",
        [X34, _idx(0, 3, 1)],
        (0,),
        label_smoothing=0.1,
        reduction="sum",
    ),
    case(
        "ce-index-extra-dims-mean",
        "cross_entropy",
        [_r(2, 3, 2, 2), lambda d, g: torch.randint(0, 3, (2, 2, 2), generator=g)],
        (0,),
        weight=_r(3, lo=0.1),
    ),
    case(
        "ce-index-extra-dims-none",
        "cross_entropy",
        [_r(2, 3, 2), lambda d, g: torch.randint(0, 3, (2, 2), generator=g)],
        (0,),
        reduction="none",
        label_smoothing=0.1,
    ),
    case("ce-index-unbatched", "cross_entropy", [_r(4), lambda d, g: torch.tensor(2)], (0,)),
    case(
        "ce-index-unbatched-none-smoothing",
        "cross_entropy",
        [_r(4), lambda d, g: torch.tensor(2)],
        (0,),
        reduction="none",
        label_smoothing=0.2,
    ),
    case(
        "ce-index-uint8-target",
        "cross_entropy",
        [X34, lambda d, g: torch.tensor([0, 3, 1], dtype=torch.uint8)],
        (0,),
    ),
    case(
        "ce-index-negative-smoothing",
        "cross_entropy",
        [X34, _idx(0, 3, 1)],
        (0,),
        label_smoothing=-0.1,
    ),
    *(
        case(f"ce-probs-{r}", "cross_entropy", [X34, _probs(3, 4)], (0, 1), reduction=r)
        for r in ("none", "mean", "sum")
    ),
    case("ce-probs-smoothing-mean", "cross_entropy", [X34, _probs(3, 4)], (0, 1), label_smoothing=0.2),
    case(
        "ce-probs-weight-smoothing-none",
        "cross_entropy",
        [X34, _probs(3, 4), _r(4, lo=0.1)],
        (0, 1, 2),
        reduction="none",
        label_smoothing=0.2,
    ),
    case("ce-probs-weight-mean", "cross_entropy", [X34, _probs(3, 4), _r(4, lo=0.1)], (0, 1, 2)),
    case(
        "ce-probs-extra-dims-sum",
        "cross_entropy",
        [_r(2, 3, 2), _probs(2, 3, 2)],
        (0, 1),
        reduction="sum",
    ),
    case(
        "ce-probs-unbatched",
        "cross_entropy",
        [_r(4), _probs(4, dim=0)],
        (0, 1),
        label_smoothing=0.1,
    ),
    case(
        "ce-legacy-size-average-false",
        "cross_entropy",
        [X34, _idx(0, 3, 1)],
        (0,),
        size_average=False,
    ),
    # NLL
    *(case(f"nll-{r}", "nll_loss", [X34, _idx(0, 3, 1)], (0,), reduction=r) for r in ("none", "mean", "sum")),
    case("nll-weight-ignore-mean", "nll_loss", [X34, _idx(0, -100, 1)], (0,), weight=_r(4, lo=0.1)),
    case(
        "nll-ignore-index-none",
        "nll_loss",
        [X34, _idx(0, 1, 1)],
        (0,),
        ignore_index=1,
        reduction="none",
    ),
    case(
        "nll-extra-dims",
        "nll_loss",
        [_r(2, 3, 2), lambda d, g: torch.randint(0, 3, (2, 2), generator=g)],
        (0,),
        weight=_r(3, lo=0.1),
    ),
    case("nll-unbatched", "nll_loss", [_r(4), lambda d, g: torch.tensor(1)], (0,)),
]


def _build(
    args: list[Any], kwargs: dict[str, Any], dtype: torch.dtype, seed: int = 0
) -> tuple[list[Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    built = [None if a is None else a(dtype, g) for a in args]
    kw = {k: (v(dtype, g) if callable(v) else v) for k, v in kwargs.items()}
    return built, kw


def _split(name: str, args: list[Any], diff: tuple[int, ...], kw: dict[str, Any]):
    """A function of the differentiable args only (what gradcheck perturbs)."""
    fixed = [a for i, a in enumerate(args) if i not in diff and a is not None]
    diff_args = [args[i] for i in diff]
    positions = [i for i, a in enumerate(args) if a is not None]

    def call(mod: Any, *d: torch.Tensor) -> torch.Tensor:
        it_d, it_f = iter(d), iter(fixed)
        full = [next(it_d) if i in diff else next(it_f) for i in positions]
        return getattr(mod, name)(*full, **kw)

    return call, diff_args


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "args", "diff", "kwargs"), CASES)
def test_gradcheck(name: str, args: list[Any], diff: tuple[int, ...], kwargs: dict[str, Any]) -> None:
    built, kw = _build(args, kwargs, torch.float64)
    call, d = _split(name, built, diff, kw)
    d = [t.requires_grad_() for t in d]
    f = lambda *t: call(MF, *t)  # noqa: E731
    assert gradcheck(f, d, check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(f, d, check_batched_grad=True)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> tuple[Any, ...]:
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "args", "diff", "kwargs"), CASES)
def test_parity(name: str, args: list[Any], diff: tuple[int, ...], kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    built, kw = _build(args, kwargs, dtype, seed=1)
    call, d = _split(name, built, diff, kw)
    ref_in = [t.clone().requires_grad_() for t in d]
    our_in = [t.clone().requires_grad_() for t in d]
    ref, ours = call(F, *ref_in), call(MF, *our_in)
    tol: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, ref, **tol)
    # an expanded (stride-0) grad_output for unreduced losses, a scalar otherwise
    go = torch.rand((), dtype=dtype).expand(ref.shape) + 0.5
    for a, b in zip(_grads(ours, our_in, go), _grads(ref, ref_in, go), strict=True):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------
# Edge inputs.
# ---------------------------------------------------------------------------------------------


def _both(fn_name: str, make: Callable[[], tuple[list[torch.Tensor], list[Any]]], **kw: Any) -> None:
    """Forward and backward parity on the tensors ``make`` returns (diff, fixed), nan-aware."""
    results = []
    diff0, fixed = make()
    for mod in (F, MF):
        diff = [t.clone().requires_grad_() for t in diff0]
        out = getattr(mod, fn_name)(*diff, *fixed, **kw)
        grads = torch.autograd.grad(out.sum(), diff) if out.requires_grad else ()
        results.append((out, grads))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2, o1, equal_nan=True)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


EDGE = [
    pytest.param(
        "cross_entropy",
        lambda: ([torch.randn(3, 4)], [torch.full((3,), -100)]),
        {},
        id="ce-all-ignored-mean-nan",
    ),
    pytest.param(
        "cross_entropy",
        lambda: ([torch.randn(3, 4)], [torch.full((3,), -100)]),
        {"label_smoothing": 0.2, "weight": torch.rand(4)},
        id="ce-all-ignored-smoothing-weight",
    ),
    pytest.param(
        "nll_loss",
        lambda: ([torch.randn(3, 4)], [torch.full((3,), -100)]),
        {},
        id="nll-all-ignored-mean-nan",
    ),
    *(
        pytest.param(
            "cross_entropy",
            lambda: ([torch.randn(0, 4)], [torch.zeros(0, dtype=torch.long)]),
            {"reduction": r},
            id=f"ce-empty-batch-{r}",
        )
        for r in ("none", "mean", "sum")
    ),
    pytest.param(
        "cross_entropy",
        lambda: ([torch.randn(0, 4)], [torch.zeros(0, 4)]),
        {},
        id="ce-probs-empty-batch-mean",
    ),
    pytest.param("mse_loss", lambda: ([torch.randn(0, 4), torch.randn(0, 4)], []), {}, id="mse-empty-mean"),
    pytest.param(
        "cross_entropy",
        lambda: ([torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])], [torch.tensor([1, 2])]),
        {},
        id="ce-large-logits",
    ),
    pytest.param(
        "cross_entropy",
        lambda: (
            [torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])],
            [torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])],
        ),
        {"label_smoothing": 0.1},
        id="ce-probs-large-logits",
    ),
    pytest.param(
        "binary_cross_entropy_with_logits",
        lambda: ([torch.tensor([1e4, -1e4, 30.0, -30.0])], [torch.tensor([0.0, 1.0, 0.5, 0.5])]),
        {"pos_weight": torch.tensor([2.0])},
        id="bce-logits-large-logits",
    ),
    pytest.param(
        "binary_cross_entropy",
        lambda: ([torch.tensor([0.0, 1.0, 1e-30, 0.5])], [torch.tensor([0.3, 0.7, 1.0, 0.5])]),
        {},
        id="bce-input-at-0-and-1-clamped",
    ),
    pytest.param(
        "cross_entropy",
        lambda: ([torch.randn(4, 3).t()], [torch.tensor([0, 2, 1])]),
        {},
        id="ce-non-contiguous-input",
    ),
    pytest.param(
        "mse_loss",
        lambda: ([torch.randn(4, 3).t(), torch.randn(4, 3).t()], []),
        {"reduction": "none"},
        id="mse-non-contiguous",
    ),
    pytest.param(
        "kl_div",
        lambda: ([torch.randn(2, 3)], [torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])]),
        {"reduction": "sum"},
        id="kl-zero-target",
    ),
    pytest.param(
        "huber_loss",
        lambda: ([torch.tensor([0.0, 1.0, -1.0, 2.0])], [torch.zeros(4)]),
        {"delta": 1.0},
        id="huber-at-delta",
    ),
    pytest.param("l1_loss", lambda: ([torch.tensor([0.0, 1.0])], [torch.zeros(2)]), {}, id="l1-at-zero"),
]


@pytest.mark.parametrize(("name", "make", "kw"), EDGE)
def test_edge_parity(name: str, make: Any, kw: dict[str, Any]) -> None:
    _both(name, make, **kw)


def test_batched_grad_output_vmap() -> None:
    """vmap over the losses themselves (generate_vmap_rule) gives torch's per-sample values."""
    x, t = torch.randn(5, 3, 4), torch.randint(0, 4, (5, 3))
    ours = torch.func.vmap(lambda a, b: MF.cross_entropy(a, b, label_smoothing=0.1))(x, t)
    ref = torch.stack([F.cross_entropy(a, b, label_smoothing=0.1) for a, b in zip(x, t, strict=True)])
    torch.testing.assert_close(ours, ref)
    y = torch.randn(5, 3, 4)
    ours = torch.func.vmap(torch.func.grad(lambda a, b: MF.mse_loss(a, b)))(x, y)
    ref = torch.func.vmap(torch.func.grad(lambda a, b: F.mse_loss(a, b)))(x, y)
    torch.testing.assert_close(ours, ref)


# ---------------------------------------------------------------------------------------------
# Errors in torch's words.
# ---------------------------------------------------------------------------------------------

X, T = torch.randn(3, 4), torch.rand(3, 4)
TI = torch.tensor([0, 1, 3])
ERRORS = [
    pytest.param("mse_loss", (X, torch.rand(3, 5)), {}, id="mse-shape-mismatch"),
    pytest.param("mse_loss", (X, T), {"reduction": "foo"}, id="mse-bad-reduction"),
    pytest.param("mse_loss", (X, T), {"reduction": "foo", "weight": T}, id="mse-weight-bad-reduction"),
    pytest.param("l1_loss", (X, T), {"weight": torch.rand(4)}, id="l1-weight-shape"),
    pytest.param("huber_loss", (X, T), {"delta": 0.0}, id="huber-delta-0"),
    pytest.param("smooth_l1_loss", (X, T), {"beta": -1.0}, id="smooth-l1-negative-beta"),
    pytest.param("binary_cross_entropy", (T, torch.rand(3, 5)), {}, id="bce-shape-mismatch"),
    pytest.param("binary_cross_entropy", (X, T), {}, id="bce-input-out-of-range"),
    pytest.param(
        "binary_cross_entropy",
        (T, T),
        {"weight": torch.rand(4, requires_grad=True)},
        id="bce-weight-requires-grad",
    ),
    pytest.param(
        "binary_cross_entropy_with_logits",
        (X, torch.rand(3, 5)),
        {},
        id="bce-logits-shape-mismatch",
    ),
    pytest.param(
        "binary_cross_entropy_with_logits",
        (X, T),
        {"pos_weight": torch.rand(4, requires_grad=True)},
        id="bce-logits-pos-weight-requires-grad",
    ),
    pytest.param("kl_div", (X, T), {"reduction": "foo"}, id="kl-bad-reduction"),
    pytest.param("kl_div", (X, torch.rand(3, 5)), {"reduction": "sum"}, id="kl-shape-mismatch"),
    pytest.param("cross_entropy", (X, TI), {"reduction": "foo"}, id="ce-bad-reduction"),
    pytest.param("cross_entropy", (X, TI.float()), {}, id="ce-float-target-index-shape"),
    pytest.param("cross_entropy", (X, TI.int()), {}, id="ce-int32-target"),
    pytest.param(
        "cross_entropy",
        (X, torch.zeros(3, 4, dtype=torch.long)),
        {},
        id="ce-long-target-probs-shape",
    ),
    pytest.param("cross_entropy", (X, torch.tensor([0, 1, 4])), {}, id="ce-target-out-of-range"),
    pytest.param("cross_entropy", (X, torch.tensor([0, 1, -1])), {}, id="ce-target-negative"),
    pytest.param("cross_entropy", (X, torch.tensor([0, 1])), {}, id="ce-batch-size-mismatch"),
    pytest.param(
        "cross_entropy",
        (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)),
        {},
        id="ce-extra-dims-mismatch",
    ),
    pytest.param("cross_entropy", (X, TI), {"weight": torch.rand(3)}, id="ce-weight-size"),
    pytest.param("cross_entropy", (X, T), {"weight": torch.rand(3)}, id="ce-probs-weight-size"),
    pytest.param("cross_entropy", (X, TI), {"label_smoothing": 1.5}, id="ce-smoothing-above-1"),
    pytest.param("cross_entropy", (X, T), {"label_smoothing": 2.0}, id="ce-probs-smoothing-above-1"),
    pytest.param("cross_entropy", (X, T), {"ignore_index": 1}, id="ce-probs-ignore-index"),
    pytest.param(
        "cross_entropy",
        (X, TI),
        {"weight": torch.rand(4, requires_grad=True)},
        id="ce-index-weight-requires-grad",
    ),
    pytest.param("cross_entropy", (torch.tensor(1.0), torch.tensor(0)), {}, id="ce-0d-input"),
    pytest.param("nll_loss", (X, torch.tensor([0, 1, 4])), {}, id="nll-target-out-of-range"),
    pytest.param("nll_loss", (torch.randn(3), torch.zeros(2, dtype=torch.long)), {}, id="nll-1d-target-size"),
    pytest.param("nll_loss", (X, TI), {"weight": torch.rand(3)}, id="nll-weight-size"),
]


def current_wording(message: str) -> str:
    """torch's error message as the torch releases manualgrad follows word it.

    A cross-entropy target of a dtype other than Long or Byte: torch 2.6 says "expected scalar type
    Long but found Float"; 2.13 and 2.14 (the releases tested besides 2.6) say "expected target dtype
    to be Long or Byte, but got Float", as manualgrad does.
    """
    if torch.__version__ >= (2, 13):
        return message
    return re.sub(
        r"^expected scalar type Long but found (\w+)$", r"expected target dtype to be Long or Byte, but got \1", message
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "args", "kw"), ERRORS)
def test_errors_match_torch(name: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    with pytest.raises(Exception) as ref:
        getattr(F, name)(*args, **kw)
    with pytest.raises(type(ref.value)) as ours:
        getattr(MF, name)(*args, **kw)
    assert str(ours.value) == current_wording(str(ref.value))


def test_warnings_match_torch() -> None:
    for fn in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        for mod in (F, MF):
            with pytest.warns(UserWarning, match="Using a target size"):
                getattr(mod, fn)(X, torch.rand(4))
    for mod in (F, MF):
        with pytest.warns(UserWarning, match="'batchmean' divides only by the batch size"):
            mod.kl_div(X, T)
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
            mod.mse_loss(X, T, size_average=False)


# ---------------------------------------------------------------------------------------------
# Autocast, graph.
# ---------------------------------------------------------------------------------------------

AUTOCAST = [
    pytest.param("mse_loss", {}, id="mse"),
    pytest.param("mse_loss", {"weight": "w"}, id="mse-weight"),
    pytest.param("l1_loss", {"weight": "w"}, id="l1-weight"),
    pytest.param("huber_loss", {"weight": "w"}, id="huber-weight"),
    pytest.param("smooth_l1_loss", {}, id="smooth-l1"),
    pytest.param("binary_cross_entropy", {"weight": "w"}, id="bce-weight"),
    pytest.param("binary_cross_entropy_with_logits", {"pos_weight": "pw"}, id="bce-logits-pos-weight"),
    pytest.param("kl_div", {"reduction": "batchmean"}, id="kl-batchmean"),
    pytest.param("cross_entropy", {"target": "index", "weight": "pw"}, id="ce-index-weight"),
    pytest.param("cross_entropy", {"target": "index", "label_smoothing": 0.1}, id="ce-index-smoothing"),
    pytest.param("cross_entropy", {"weight": "pw", "label_smoothing": 0.1}, id="ce-probs-weight-smoothing"),
    pytest.param("nll_loss", {"target": "index"}, id="nll"),
]


@pytest.mark.parametrize("dtypes", [("bf16", "bf16"), ("f32", "bf16"), ("bf16", "f32")], ids=lambda d: "-".join(d))
@pytest.mark.parametrize(("name", "kw"), AUTOCAST)
def test_autocast_bf16_dtypes(name: str, kw: dict[str, Any], dtypes: tuple[str, str]) -> None:
    dt = {"bf16": torch.bfloat16, "f32": torch.float32}
    x_dtype, other = dt[dtypes[0]], dt[dtypes[1]]
    results = []
    for mod in (F, MF):
        x = torch.rand(3, 4, dtype=x_dtype).clamp(0.05, 0.95).requires_grad_()
        kw2 = dict(kw)
        target = torch.rand(3, 4, dtype=other).clamp(0.05, 0.95)
        if kw2.pop("target", None) == "index":
            target = torch.tensor([0, 3, 1])
        for k, v in list(kw2.items()):
            if v == "w":
                kw2[k] = torch.rand(3, 4, dtype=other)
            elif v == "pw":
                kw2[k] = torch.rand(4, dtype=other) + 0.5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = getattr(mod, name)(x, target, **kw2)
        out.backward()
        results.append((out.dtype, x.grad.dtype))  # type: ignore[union-attr]
    assert results[1] == results[0]


def _graph_nodes(t: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        stack.extend(n for n, _ in node.next_functions)
    return names


def _is_manualgrad_node(name: str) -> bool:
    cls = getattr(MF, name.removesuffix("Backward"), None) if name.endswith("Backward") else None
    return isinstance(cls, type) and issubclass(cls, torch.autograd.Function)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "args", "diff", "kwargs"), CASES)
def test_graph_has_only_manualgrad_nodes(
    name: str, args: list[Any], diff: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    built, kw = _build(args, kwargs, torch.float32)
    call, d = _split(name, built, diff, kw)
    names = _graph_nodes(call(MF, *[t.requires_grad_() for t in d]))
    assert names and _is_manualgrad_node(names[0])
    assert all(_is_manualgrad_node(n) or n == "torch::autograd::AccumulateGrad" for n in names), names


# ---------------------------------------------------------------------------------------------
# Modules.
# ---------------------------------------------------------------------------------------------

MODULES = [
    pytest.param("MSELoss", {}, id="MSELoss"),
    pytest.param("MSELoss", {"reduction": "sum"}, id="MSELoss-sum"),
    pytest.param("MSELoss", {"size_average": False}, id="MSELoss-legacy"),
    pytest.param("L1Loss", {"reduction": "none"}, id="L1Loss-none"),
    pytest.param("HuberLoss", {"delta": 0.5}, id="HuberLoss-delta"),
    pytest.param("SmoothL1Loss", {"beta": 0.5, "reduction": "sum"}, id="SmoothL1Loss-beta"),
    pytest.param("CrossEntropyLoss", {}, id="CrossEntropyLoss"),
    pytest.param(
        "CrossEntropyLoss",
        {"weight": torch.rand(4), "ignore_index": 2, "label_smoothing": 0.1},
        id="CrossEntropyLoss-weight-smoothing",
    ),
    pytest.param("NLLLoss", {"weight": torch.rand(4), "reduction": "sum"}, id="NLLLoss-weight"),
    pytest.param("BCELoss", {"weight": torch.rand(4)}, id="BCELoss-weight"),
    pytest.param("BCELoss", {}, id="BCELoss"),
    pytest.param("BCEWithLogitsLoss", {"pos_weight": torch.rand(4)}, id="BCEWithLogitsLoss-pos-weight"),
    pytest.param(
        "BCEWithLogitsLoss",
        {"weight": torch.rand(3, 4), "pos_weight": torch.rand(4)},
        id="BCEWithLogitsLoss-both",
    ),
    pytest.param("KLDivLoss", {"reduction": "batchmean", "log_target": True}, id="KLDivLoss-log-target"),
]


def _params(obj: Any) -> list[tuple[str, Any, Any]]:
    """Names, defaults and kinds of a signature (annotations differ: torch leaves some out)."""
    return [(p.name, p.default, p.kind) for p in inspect.signature(obj).parameters.values()]


def _module_inputs(cls: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(3, 4).clamp(0.05, 0.95)
    if cls in ("CrossEntropyLoss", "NLLLoss"):
        return x, torch.tensor([0, 2, 3])
    return x, torch.rand(3, 4)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("cls", "kw"), MODULES)
def test_module_twin(cls: str, kw: dict[str, Any]) -> None:
    ref, ours = getattr(nn, cls)(**kw), getattr(mnn, cls)(**kw)
    assert repr(ours) == repr(ref)
    assert vars(ours).keys() == vars(ref).keys()
    assert ours._buffers.keys() == ref._buffers.keys()
    assert getattr(type(ours), "__constants__", None) == getattr(type(ref), "__constants__", None)
    assert _params(type(ours)) == _params(type(ref))
    # state_dict both ways
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x, t = _module_inputs(cls)
    torch.testing.assert_close(ours(x, t), ref(x, t))
    # convert swaps the torch.nn module for the twin, keeping its buffers
    converted = manualgrad.convert(ref)
    assert type(converted) is type(ours)
    for name, buf in ref.named_buffers():
        assert getattr(converted, name) is buf
    torch.testing.assert_close(converted(x, t), ref(x, t))


def test_module_weight_buffer_moves_with_to() -> None:
    m = mnn.CrossEntropyLoss(weight=torch.rand(4))
    assert m.to(torch.float64).weight.dtype == torch.float64  # type: ignore[union-attr]
    assert mnn.BCEWithLogitsLoss().state_dict() == {}


def test_huber_delta_type_error() -> None:
    with pytest.raises(TypeError, match="delta must be a float or int"):
        mnn.HuberLoss(delta="1")  # type: ignore[arg-type]


def test_functional_signatures_match_torch() -> None:
    for name in (
        "mse_loss",
        "l1_loss",
        "huber_loss",
        "smooth_l1_loss",
        "cross_entropy",
        "nll_loss",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "kl_div",
    ):
        ours, ref = inspect.signature(getattr(MF, name)), inspect.signature(getattr(F, name))
        assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
            (p.name, p.default, p.kind) for p in ref.parameters.values()
        ], name


def test_no_warnings_in_normal_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.randn(3, 4, requires_grad=True)
        MF.cross_entropy(x, torch.tensor([0, 1, 2])).backward()
        MF.mse_loss(x, torch.randn(3, 4), reduction="sum").backward()


@pytest.mark.slow
def test_dynamo_traces_losses_without_graph_break() -> None:
    """Every loss and softmax Function is traced by Dynamo (ManualFunction.call outside forward AD)."""
    import torch._dynamo

    torch._dynamo.reset()
    t, p, w = torch.tensor([0, 1, 3]), torch.rand(3, 4), torch.rand(3, 4)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (
            MF.cross_entropy(x, t, label_smoothing=0.1)
            + MF.cross_entropy(x, p.softmax(1))
            + MF.nll_loss(MF.log_softmax(x, 1), t)
            + MF.mse_loss(x, p)
            + MF.l1_loss(x, p, weight=w)
            + MF.huber_loss(x, p)
            + MF.smooth_l1_loss(x, p)
            + MF.binary_cross_entropy(x.sigmoid(), p)
            + MF.binary_cross_entropy_with_logits(x, p, pos_weight=torch.ones(4))
            + MF.kl_div(x, p, reduction="batchmean")
            + MF.softmax(x, 1).sum()
            + MF.softmin(x, 0).sum()
            + MF.glu(x, 1).sum()
        )

    explanation = torch._dynamo.explain(f)(torch.randn(3, 4, requires_grad=True))
    assert explanation.graph_break_count == 0, explanation.break_reasons


INDEX_GRAD_CASES = [
    # (logits shape, targets, reduction, ignore_index): below, inside and above the classes
    pytest.param((16, 5), [0, 4, 2, 1] * 4, "mean", -100, id="mean"),
    pytest.param((16, 5), [0, 4, 2, 1] * 4, "sum", -100, id="sum"),
    pytest.param((16, 5), [0, -100, 4, 2] * 4, "mean", -100, id="ignored-mean"),
    pytest.param((4, 3), [-100] * 4, "mean", -100, id="all-ignored"),
    pytest.param((16, 5), [0, 4, 2, 1] * 4, "mean", 2, id="ignore-a-class-mean"),
    pytest.param((16, 5), [0, 4, 3, 1] * 4, "sum", 2, id="ignore-an-absent-class-sum"),
    pytest.param((16, 5), [0, 5, 2, 1] * 4, "mean", 5, id="ignore-above-the-classes-mean"),
    pytest.param((16, 5), [0, 4, 2, 1] * 4, "mean", 5, id="none-ignored-above-the-classes"),
    pytest.param((0, 5), [], "sum", -100, id="empty-batch"),
]


@pytest.mark.parametrize(("shape", "targets", "reduction", "ignore_index"), INDEX_GRAD_CASES)
def test_cross_entropy_eager_form_is_the_same_arithmetic(
    shape: tuple[int, ...], targets: Any, reduction: str, ignore_index: int
) -> None:
    """``_index_grad_eager`` (p = exp(log p), p − onehot as a scatter_add, in place) gives ``_index_grad``'s
    values, both give torch's gradient, and the saved log-probabilities are left as they were."""
    from manualgrad.functional.loss import _index_grad, _index_grad_eager

    torch.manual_seed(0)
    x, t = torch.randn(shape, dtype=torch.float64, requires_grad=True), torch.tensor(targets, dtype=torch.long)
    logp, g = torch.log_softmax(x.detach(), -1), torch.tensor(0.7, dtype=torch.float64)
    formula = _index_grad(g, logp.exp(), t, reduction, ignore_index)
    saved = logp.clone()
    with torch.no_grad():
        eager = _index_grad_eager(g, saved, t, reduction, ignore_index)
    assert torch.equal(saved, logp)
    torch.testing.assert_close(eager, formula, rtol=1e-14, atol=1e-16)
    loss = F.cross_entropy(x, t, reduction=reduction, ignore_index=ignore_index)
    (want,) = torch.autograd.grad(loss * g, x)
    torch.testing.assert_close(formula, want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# References: torch's forward AD and double backward, the weighted losses' weight gradients,
# NaN/±inf inputs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("name", "args", "diff", "kwargs"), CASES)
def test_forward_ad_and_double_backward_match_torch(
    name: str, args: list[Any], diff: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    """Tangents on every differentiable argument, and the double-backward path, against torch's own
    in float64 at rtol 1e-7 (gradcheck's default tolerances would let a 1e-4 error through)."""
    built, kw = _build(args, kwargs, torch.float64, seed=2)
    call, d = _split(name, built, diff, kw)
    tangents = [torch.randn_like(t) for t in d]
    assert_ref(
        tangent_of(lambda *t: call(MF, *t), d, tangents),
        tangent_of(lambda *t: call(F, *t), d, tangents),
    )
    inputs = [t.clone().requires_grad_() for t in d]
    assert_all_ref(second_order(lambda *t: call(MF, *t), inputs), second_order(lambda *t: call(F, *t), inputs))


WEIGHTED = [
    pytest.param(name, reduction, id=f"{name.removesuffix('_loss')}-weight-{reduction}")
    for name in ("mse_loss", "l1_loss", "huber_loss")
    for reduction in ("none", "mean", "sum")
]


@pytest.mark.parametrize(("name", "reduction"), WEIGHTED)
def test_weighted_loss_weight_gradient(name: str, reduction: str) -> None:
    """``weight`` takes a gradient in torch (its weighted losses are ordinary ops): the weight
    gradient (the weighted mean's ``(ℓ − L)/Σw``), its tangent and double backward, against torch."""
    g = torch.Generator().manual_seed(3)
    x, t = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    kw: dict[str, Any] = {"reduction": reduction, "delta": 0.7} if name == "huber_loss" else {"reduction": reduction}

    def fn(mod: Any) -> Callable[..., torch.Tensor]:
        return lambda x, t, w: getattr(mod, name)(x, t, weight=w, **kw)

    inputs = [x.requires_grad_(), t.requires_grad_(), w.requires_grad_()]
    ours, ref = fn(MF)(*inputs), fn(F)(*inputs)
    assert_ref(ours, ref)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    assert_all_ref(torch.autograd.grad(ours, inputs, go), torch.autograd.grad(ref, inputs, go))
    for which in range(4):  # each tangent alone, then all three
        tangents = [torch.randn_like(a) if which in (i, 3) else None for i, a in enumerate(inputs)]
        assert_ref(tangent_of(fn(MF), inputs, tangents), tangent_of(fn(F), inputs, tangents))
    assert_all_ref(second_order(fn(MF), inputs), second_order(fn(F), inputs))


NAN, INF = float("nan"), float("inf")


def _nonfinite(*shape: int, lo: float = -2.0, hi: float = 2.0, values: tuple[float, ...] = (NAN, INF, -INF)) -> Any:
    """A maker of random values in [lo, hi) with ``values`` at a few fixed random places."""

    def make(dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
        t = torch.rand(*shape, generator=g, dtype=dtype) * (hi - lo) + lo
        flat = t.view(-1)
        places = torch.randperm(flat.numel(), generator=g)[: 2 * len(values)]
        for i, p in enumerate(places.tolist()):
            flat[p] = values[i % len(values)]
        return t

    return make


X416 = _nonfinite(4, 16)
NONFINITE = [
    *(
        case(f"{n.removesuffix('_loss')}-{r}", n, [X416, X416], (0, 1), reduction=r, **extra)
        for n, extra in (("mse_loss", {}), ("l1_loss", {}), ("huber_loss", {"delta": 0.7}))
        for r in ("none", "mean", "sum")
    ),
    *(
        case(f"{n.removesuffix('_loss')}-weight-{r}", n, [X416, X416], (0, 1), reduction=r, weight=_r(4, 16, lo=0.1))
        for n in ("mse_loss", "l1_loss", "huber_loss")
        for r in ("none", "mean", "sum")
    ),
    *(
        case(f"smooth-l1-beta{b}-{r}", "smooth_l1_loss", [X416, X416], (0, 1), reduction=r, beta=b)
        for b in (0.5, 0.0)
        for r in ("none", "sum")
    ),
    *(
        case(
            f"bce-{r}",
            "binary_cross_entropy",
            [_r(4, 16, lo=0.05, hi=0.95), _nonfinite(4, 16, lo=0.0, hi=1.0, values=(NAN,))],
            (0, 1),
            reduction=r,
        )
        for r in ("none", "mean")
    ),
    case("bce-nan-input", "binary_cross_entropy", [_nonfinite(4, 16, lo=0.05, hi=0.95, values=(NAN,)), X416], (0, 1)),
    *(
        case(f"bce-logits{tag}-{r}", "binary_cross_entropy_with_logits", [X416, X416], (0, 1), reduction=r, **extra)
        for r in ("none", "mean")
        for tag, extra in (("", {}), ("-pos-weight", {"pos_weight": _r(16, lo=0.2)}))
    ),
    *(
        case(f"kl-{r}", "kl_div", [X416, _nonfinite(4, 16, lo=0.05, hi=1.0)], (0, 1), reduction=r)
        for r in ("none", "batchmean")
    ),
    case("kl-log-target", "kl_div", [X416, X416], (0, 1), reduction="sum", log_target=True),
    *(
        case(
            f"ce-index{tag}-{r}",
            "cross_entropy",
            [X416, lambda d, g: torch.randint(0, 16, (4,), generator=g)],
            (0,),
            reduction=r,
            **extra,
        )
        for r in ("none", "mean", "sum")
        for tag, extra in (("", {}), ("-smoothing", {"label_smoothing": 0.1}))
    ),
    case("ce-probs", "cross_entropy", [X416, _probs(4, 16)], (0, 1)),
    case("ce-probs-nan-target", "cross_entropy", [_r(4, 16), _nonfinite(4, 16, lo=0.0, hi=0.1)], (0, 1)),
    *(
        case(f"nll-{r}", "nll_loss", [X416, lambda d, g: torch.randint(0, 16, (4,), generator=g)], (0,), reduction=r)
        for r in ("none", "mean")
    ),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "args", "diff", "kwargs"), NONFINITE)
def test_nan_and_inf_inputs_match_torch(
    name: str, args: list[Any], diff: tuple[int, ...], kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    """NaN and ±inf in inputs and targets: the values and gradients torch gives, NaN where torch's is
    (or torch's error where it refuses them)."""
    built, kw = _build(args, kwargs, dtype, seed=4)
    call, d = _split(name, built, diff, kw)
    results: list[Any] = []
    for mod in (F, MF):
        inputs = [t.clone().requires_grad_() for t in d]
        try:
            out = call(mod, *inputs)
        except RuntimeError as err:
            results.append(type(err))
            continue
        go = torch.rand(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype) + 0.5
        results.append((out, torch.autograd.grad(out, inputs, go)))
    ref, ours = results
    if not isinstance(ref, tuple) or not isinstance(ours, tuple):
        assert ours == ref
        return
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)
    for a, b in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
