r"""Losses with hand-derived gradients: the ``torch.nn.functional`` losses, option for option.

Pointwise losses (:class:`MSELoss`, :class:`L1Loss`, :class:`HuberLoss`, :class:`SmoothL1Loss`,
:class:`BCELoss`, :class:`BCEWithLogitsLoss`, :class:`KLDivLoss`) share one scheme: an elementwise
loss :math:`\ell(x, t)`, an optional weight :math:`w`, and a reduction. With
:math:`G = \partial C / \partial \text{loss}` scaled by the reduction (``1`` for ``'none'`` and
``'sum'``, ``1/n`` for ``'mean'``, ``1/N`` for ``'batchmean'``),

.. math::
    \frac{\partial C}{\partial x} = G\, w\, \frac{\partial \ell}{\partial x}, \qquad
    \frac{\partial C}{\partial t} = G\, w\, \frac{\partial \ell}{\partial t}, \qquad
    \frac{\partial C}{\partial w} = G\, \ell

and the weighted mean :math:`L = \sum w\ell / \sum w` of ``mse_loss``/``l1_loss`` gives
:math:`\partial L/\partial w = (\ell - L) / \sum w`. Gradients of broadcast operands are summed
back to their shapes.

Cross entropy is one Function (:class:`CrossEntropyLoss`), and :class:`CrossEntropyIndices` for
its common case (``(N, C)`` logits, class indices, no weight or smoothing): with
:math:`p = \text{softmax}(x)` over the class dim and the per-class coefficients :math:`a = w \odot y_s`
(:math:`y_s` the smoothed one-hot or probability target, zero on ignored samples), the sample loss is
:math:`-\sum_c a_c \log p_c` and

.. math::
    \frac{\partial C}{\partial x} = \frac{G}{\text{norm}} \Big(p \sum_c a_c - a\Big)

which is :math:`(p - y_s)\, w / \text{norm}` when :math:`w` is a constant. ``norm`` is the
summed target weight (class indices) or the number of samples (probabilities) for ``'mean'``.

Every backward is made of differentiable torch ops on saved inputs and outputs (cross entropy
returns its log-probabilities as a hidden output), so double
backward works; each has a ``jvp``.
Under autocast, the losses torch runs in float32 run in float32 here too (inside the Function);
the backward computes in ``grad_output``'s dtype.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from manualgrad._compat import nn_kernels
from manualgrad._compat import reduction_args as _Reduction
from manualgrad.fusion import FUSION, plain_first_order

from ._common import TAP, ManualFunction, forward_ad_enabled, in_dtype

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyIndices",
    "CrossEntropyLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "NLLLoss",
    "PointwiseLoss",
    "SmoothL1Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "smooth_l1_loss",
]

_nn: Any = nn_kernels  # torch's loss kernels (their stubs type ``reduction`` as str; it is an int)
_REDUCTIONS = ("none", "mean", "sum")
_BCE_EPS = 1e-12  # torch's EPSILON in binary_cross_entropy_backward


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _fp32(on: bool, *tensors: Tensor | None) -> tuple[Any, ...]:
    """Autocast's float32 policy: cast floating tensors other than float64 to float32.

    ``on`` says whether the op is one that torch's autocast runs in float32 (all losses here but
    the weighted ``mse_loss``/``l1_loss``, which torch composes of ordinary ops).
    """
    first = next(t for t in tensors if t is not None)
    if not on or not torch.is_autocast_enabled(first.device.type):
        return tensors
    return tuple(
        t.float() if t is not None and t.is_floating_point() and t.dtype not in (torch.float32, torch.float64) else t
        for t in tensors
    )


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """The gradient of a broadcast operand: sum over the broadcast dims (``grad.sum_to_size``)."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)


def _legacy(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


def _enum_reduction(reduction: str) -> str:
    """Validate as torch's ``get_enum`` (ValueError; 'elementwise_mean' deprecated) and normalise."""
    return _REDUCTIONS[_Reduction.get_enum(reduction)]


def _warn_size(input: Tensor, target: Tensor) -> None:
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,
        )


def _no_grad_arg(fname: str, name: str, t: Tensor | None) -> None:
    """torch's error for a tensor argument its op is not differentiable in."""
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"The function '{fname}' is not differentiable with respect to argument '{name}'. "
            "This input cannot have requires_grad True."
        )


# ---------------------------------------------------------------------------------------------
# Pointwise losses.
# ---------------------------------------------------------------------------------------------


def _elementwise(kind: str, x: Tensor, t: Tensor, param: float) -> Tensor:
    """The unreduced loss ℓ of the kinds that take a differentiable weight (mse, l1, huber)."""
    d = x - t
    if kind == "mse":
        return d * d
    if kind == "l1":
        return d.abs()
    # huber: ℓ = ½d² if |d| < δ else δ(|d| − ½δ)
    return torch.where(d.abs() < param, 0.5 * d * d, param * (d.abs() - 0.5 * param))


def _partials(kind: str, x: Tensor, t: Tensor, pw: Tensor | None, param: float) -> tuple[Tensor, Tensor]:
    """(∂ℓ/∂x, ∂ℓ/∂t) elementwise, before weight and reduction."""
    if kind in ("mse", "l1", "huber", "smooth_l1"):
        d = x - t
        if kind == "mse":
            # ℓ = d², d = x − t: ∂ℓ/∂x = 2d
            dx = 2 * d
        elif kind == "l1" or (kind == "smooth_l1" and param == 0):
            # ℓ = |d|: ∂ℓ/∂x = sign(d)
            dx = d.sign()
        elif kind == "huber":
            # ℓ = ½d² (|d| < δ), δ(|d| − ½δ) else: ∂ℓ/∂x = clamp(d, −δ, δ)
            dx = d.clamp(-param, param)
        else:
            # ℓ = ½d²/β (|d| < β), |d| − ½β else: ∂ℓ/∂x = clamp(d/β, −1, 1)
            dx = (d / param).clamp(-1, 1)
        # ℓ depends on x − t only: ∂ℓ/∂t = −∂ℓ/∂x
        return dx, -dx
    if kind == "bce":
        # ℓ = −(t log x + (1 − t) log(1 − x)): ∂ℓ/∂x = (x − t) / max(x(1 − x), ε)
        dx = (x - t) / (x * (1 - x)).clamp_min(_BCE_EPS)
        # ∂ℓ/∂t = log(1 − x) − log x = −logit(x)
        return dx, -torch.logit(x)
    if kind == "bce_logits":
        if pw is None:
            # ℓ = (1 − t)x + softplus(−x): ∂ℓ/∂x = σ(x) − t, ∂ℓ/∂t = −x
            return torch.sigmoid(x) - t, -x
        # ℓ = (1 − t)x + (1 + (p − 1)t) softplus(−x): ∂ℓ/∂x = (p t + 1 − t) σ(x) − p t (torch's order: nan at t = ±∞)
        pt = pw * t
        dx = (pt + 1 - t) * torch.sigmoid(x) - pt
        # ∂ℓ/∂t = −x + (p − 1) softplus(−x) = p softplus(−x) − softplus(x)
        dt = pw * F.softplus(-x) - F.softplus(x)
        return dx, dt
    if kind == "kl":
        # ℓ = t (log t − x): ∂ℓ/∂x = −t, ∂ℓ/∂t = log t + t/t − x (t/t = 1 as torch's xlogy derivative
        # writes it: nan at t = 0 and t = ∞, as torch)
        dt = torch.log(t) + t / t - x
        return -t.expand_as(dt), dt
    # kl_log: ℓ = eᵗ (t − x): ∂ℓ/∂x = −eᵗ, ∂ℓ/∂t = eᵗ (t + 1 − x)
    et = t.exp()
    dt = et * (t + 1 - x)
    return -et.expand_as(dt), dt


def _pointwise_value(
    kind: str, x: Tensor, t: Tensor, w: Tensor | None, pw: Tensor | None, red: str, param: float
) -> Tensor:
    """The loss value from torch's forward kernels (so values, errors and dtypes are torch's)."""
    if kind in ("mse", "l1") and w is not None:
        # torch composes the weighted losses of ordinary ops: the same ops give the same dtype
        xb, tb = torch.broadcast_tensors(x, t)
        ew = (torch.pow(xb - tb, 2) if kind == "mse" else torch.abs(xb - tb)) * w
        return ew if red == "none" else torch.sum(ew) if red == "sum" else torch.sum(ew) / w.sum()
    x, t, pw = _fp32(True, x, t, pw)
    if kind in ("mse", "l1", "huber", "smooth_l1"):
        xb, tb = torch.broadcast_tensors(x, t)
        if kind == "huber" and w is not None:
            ew = _nn.huber_loss(xb, tb, 0, param) * w
            return ew if red == "none" else torch.sum(ew) if red == "sum" else ew.mean()
        enum = _Reduction.get_enum(red)
        if kind == "mse":
            return _nn.mse_loss(xb, tb, enum)
        if kind == "l1" or (kind == "smooth_l1" and param == 0):
            return _nn.l1_loss(xb, tb, enum)
        if kind == "huber":
            return _nn.huber_loss(xb, tb, enum, param)
        return _nn.smooth_l1_loss(xb, tb, enum, param)
    if kind == "bce":
        w = _fp32(True, w)[0] if w is not None else None
        if w is not None:
            w = w.expand(torch.broadcast_shapes(t.size(), w.size()))
        return _nn.binary_cross_entropy(x, t, w, _Reduction.get_enum(red))
    if kind == "bce_logits":
        w = _fp32(True, w)[0] if w is not None else None
        return torch.binary_cross_entropy_with_logits(x, t, w, pw, _Reduction.get_enum(red))
    enum = _Reduction.get_enum("sum" if red == "batchmean" else red)
    out = torch.kl_div(x, t, enum, log_target=kind == "kl_log")
    return out / x.size(0) if red == "batchmean" and x.dim() != 0 else out


def _scale(red: str, g: Tensor, shape: torch.Size, x: Tensor, w: Tensor | None) -> Tensor:
    """∂loss/∂(elementwise loss) times g: the reduction's derivative."""
    if red == "mean":
        # loss = Σℓ / n
        return g / math.prod(shape)
    if red == "batchmean":
        # loss = Σℓ / N
        return g / x.size(0) if x.dim() != 0 else g
    if red == "wmean":
        # loss = Σ wℓ / Σ w
        return g / w.sum()  # type: ignore[union-attr]
    return g


class PointwiseLoss(ManualFunction):
    r"""An elementwise loss with reduction: ``apply(x, t, w, pos_weight, kind, red, param)``.

    ``kind`` is one of ``mse``, ``l1``, ``huber`` (``param`` δ), ``smooth_l1`` (``param`` β),
    ``bce``, ``bce_logits``, ``kl``, ``kl_log``; ``red`` one of ``none``, ``mean``, ``sum``,
    ``batchmean`` and ``wmean`` (the weighted mean :math:`\sum w\ell / \sum w`).
    """

    @staticmethod
    def forward(
        x: Tensor,
        t: Tensor,
        w: Tensor | None,
        pw: Tensor | None,
        kind: str,
        red: str,
        param: float,
    ) -> Tensor:
        return _pointwise_value(kind, x, t, w, pw, "mean" if red == "wmean" else red, param)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, t, w, pw, kind, red, param = inputs
        ctx.kind, ctx.red, ctx.param = kind, red, param
        saved = (x, t, w, pw, output if red == "wmean" else None)
        ctx.save_for_backward(*saved)
        if forward_ad_enabled():
            ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x0, t0, w0, pw0, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        kind, red, param = ctx.kind, ctx.red, ctx.param
        dtype = grad_output.dtype
        x, t = x0.to(dtype), t0.to(dtype)
        w = None if w0 is None else w0.to(dtype)
        pw = None if pw0 is None else pw0.to(dtype)
        shape = torch.broadcast_shapes(x.shape, t.shape)
        # G = dC/dloss ⊙ dloss/dℓ  (the reduction's derivative)
        G = _scale(red, grad_output, shape, x, w)
        # the weight multiplies ℓ: dC/dℓ_weighted = G ⊙ w
        Gw = G if w is None else G * w
        grad_x = grad_t = grad_w = None
        if needs[0] or needs[1]:
            dx, dt = _partials(kind, x, t, pw, param)
            if needs[0]:
                # grad_input = G ⊙ w ⊙ ∂ℓ/∂x, summed over broadcast dims
                grad_x = _sum_to(Gw * dx, x.shape)
            if needs[1]:
                # grad_target = G ⊙ w ⊙ ∂ℓ/∂t, summed over broadcast dims
                grad_t = _sum_to(Gw * dt, t.shape)
        if needs[2]:
            ell = _elementwise(kind, x, t, param)
            # grad_weight = G ⊙ ℓ
            grad_w = _sum_to(G * ell, w.shape)  # type: ignore[union-attr]
            if red == "wmean":
                # L = Σwℓ / Σw: ∂L/∂w = (ℓ − L) / Σw
                grad_w = grad_w - G * out.to(dtype)
        return grad_x, grad_t, grad_w, None, None, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor | None, t_t: Tensor | None, w_t: Tensor | None, *_: Any) -> Tensor:
        x, t, w, pw, out = ctx.saved_tensors
        kind, red, param = ctx.kind, ctx.red, ctx.param
        dx, dt = _partials(kind, x, t, pw, param)
        # dℓ = ∂ℓ/∂x ẋ + ∂ℓ/∂t ṫ
        d_ell = torch.zeros_like(dx)
        if x_t is not None:
            d_ell = d_ell + dx * x_t
        if t_t is not None:
            d_ell = d_ell + dt * t_t
        # d(wℓ) = w dℓ + ℓ ẇ
        d_elem = d_ell if w is None else d_ell * w
        if w_t is not None:
            d_elem = d_elem + _elementwise(kind, x, t, param) * w_t
        if red == "none":
            return d_elem
        total = d_elem.sum()
        if red == "wmean":
            # d(Σwℓ / Σw) = (Σ d(wℓ) − L Σẇ) / Σw
            if w_t is not None:
                total = total - out * w_t.sum()
            return total / w.sum()
        shape = torch.broadcast_shapes(x.shape, t.shape)
        return _scale(red, total, shape, x, w)


class MSELoss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='mse'`` (its own autograd node name)."""


class L1Loss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='l1'``."""


class HuberLoss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='huber'``."""


class SmoothL1Loss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='smooth_l1'``."""


class BCELoss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='bce'``."""


class BCEWithLogitsLoss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='bce_logits'``."""


class KLDivLoss(PointwiseLoss):
    """:class:`PointwiseLoss` with ``kind='kl'`` or ``'kl_log'``."""


def _regression(
    fname: str,
    fn: type[PointwiseLoss],
    kind: str,
    input: Tensor,
    target: Tensor,
    reduction: str,
    weight: Tensor | None,
    param: float = 0.0,
    weighted_mean: str = "wmean",
) -> Tensor:
    _warn_size(input, target)
    if weight is None:
        return fn.call(input, target, None, None, kind, _enum_reduction(reduction), param)
    if weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")
    red = weighted_mean if reduction == "mean" else reduction
    return fn.call(input, target, weight, None, kind, red, param)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    r"""Mean squared error :math:`\ell = (x - t)^2` (``torch.nn.functional.mse_loss``).

    Gradients: :math:`\partial\ell/\partial x = 2(x - t) = -\partial\ell/\partial t`. With ``weight``
    (the shape of ``input``) the loss is :math:`w\ell`, ``'mean'`` divides by :math:`\sum w`.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
        tensor(5.)
    """
    reduction = _legacy(size_average, reduce, reduction)
    return _regression("mse_loss", MSELoss, "mse", input, target, reduction, weight)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    r"""Mean absolute error :math:`\ell = |x - t|` (``torch.nn.functional.l1_loss``).

    Gradients: :math:`\partial\ell/\partial x = \text{sign}(x - t) = -\partial\ell/\partial t`.
    With ``weight`` the loss is :math:`w\ell`, ``'mean'`` divides by :math:`\sum w`.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.l1_loss(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0]))
        tensor(2.)
    """
    reduction = _legacy(size_average, reduce, reduction)
    return _regression("l1_loss", L1Loss, "l1", input, target, reduction, weight)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    r"""Huber loss (``torch.nn.functional.huber_loss``).

    :math:`\ell = \frac12 d^2` if :math:`|d| < \delta`, else :math:`\delta(|d| - \frac12\delta)`,
    :math:`d = x - t`; :math:`\partial\ell/\partial x = \text{clamp}(d, -\delta, \delta)`. With
    ``weight`` the loss is :math:`w\ell` and ``'mean'`` is the plain mean (as torch).

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.huber_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="sum")
        tensor(2.6250)
    """
    return _regression("huber_loss", HuberLoss, "huber", input, target, reduction, weight, delta, "mean")


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    r"""Smooth L1 loss (``torch.nn.functional.smooth_l1_loss``).

    :math:`\ell = \frac12 d^2/\beta` if :math:`|d| < \beta`, else :math:`|d| - \frac12\beta`;
    :math:`\partial\ell/\partial x = \text{clamp}(d/\beta, -1, 1)` (``beta=0``: the L1 loss).

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="sum")
        tensor(2.6250)
    """
    _warn_size(input, target)
    reduction = _enum_reduction(_legacy(size_average, reduce, reduction))
    return SmoothL1Loss.call(input, target, None, None, "smooth_l1", reduction, beta)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Binary cross entropy of probabilities (``torch.nn.functional.binary_cross_entropy``).

    :math:`\ell = -w\,(t \log x + (1 - t) \log(1 - x))`, the logs clamped at -100 as torch;
    :math:`\partial\ell/\partial x = w(x - t)/\max(x(1 - x), 10^{-12})`,
    :math:`\partial\ell/\partial t = -w\,\text{logit}(x)`. ``weight`` takes no gradient.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.binary_cross_entropy(torch.tensor([0.5]), torch.tensor([1.0]))
        tensor(0.6931)
    """
    reduction = _enum_reduction(_legacy(size_average, reduce, reduction))
    if target.size() != input.size():
        raise ValueError(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}) is deprecated. Please ensure they have the same size."
        )
    _no_grad_arg("binary_cross_entropy", "weight", weight)
    return BCELoss.call(input, target, weight, None, "bce", reduction, 0.0)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    r"""Binary cross entropy of logits (``F.binary_cross_entropy_with_logits``).

    :math:`\ell = w\,[(1 - t)x + (1 + (p - 1)t)\,\text{softplus}(-x)]` with ``pos_weight`` :math:`p`;
    :math:`\partial\ell/\partial x = w\,(\sigma(x)(1 + (p - 1)t) - p t)`,
    :math:`\partial\ell/\partial t = w\,(p\,\text{softplus}(-x) - \text{softplus}(x))`.
    ``weight`` and ``pos_weight`` take no gradient.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.binary_cross_entropy_with_logits(torch.tensor([0.0]), torch.tensor([1.0]))
        tensor(0.6931)
    """
    reduction = _enum_reduction(_legacy(size_average, reduce, reduction))
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    _no_grad_arg("binary_cross_entropy_with_logits", "weight", weight)
    _no_grad_arg("binary_cross_entropy_with_logits", "pos_weight", pos_weight)
    return BCEWithLogitsLoss.call(input, target, weight, pos_weight, "bce_logits", reduction, 0.0)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    r"""Kullback-Leibler divergence of log-probabilities ``input`` (``F.kl_div``).

    :math:`\ell = t(\log t - x)`: :math:`\partial\ell/\partial x = -t`,
    :math:`\partial\ell/\partial t = \log t + 1 - x`; ``log_target``: :math:`\ell = e^t(t - x)`,
    :math:`\partial\ell/\partial x = -e^t`, :math:`\partial\ell/\partial t = e^t(t + 1 - x)`.
    ``'batchmean'`` divides the sum by the batch size.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.kl_div(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.5]]), reduction="batchmean")
        tensor(-0.6931)
    """
    if size_average is not None or reduce is not None:
        red = _enum_reduction(_Reduction.legacy_get_string(size_average, reduce))
    else:
        if reduction == "mean":
            warnings.warn(
                "reduction: 'mean' divides the total loss by both the batch size and the "
                "support size.'batchmean' divides only by the batch size, and aligns with the KL "
                "div math definition.'mean' will be changed to behave the same as 'batchmean' in "
                "the next major release.",
                stacklevel=2,
            )
        red = "batchmean" if reduction == "batchmean" else _enum_reduction(reduction)
    kind = "kl_log" if log_target else "kl"
    return KLDivLoss.call(input, target, None, None, kind, red, 0.0)


# ---------------------------------------------------------------------------------------------
# Cross entropy and NLL.
# ---------------------------------------------------------------------------------------------


def _class_view(w: Tensor, ndim: int, cd: int) -> Tensor:
    """View a per-class vector so it broadcasts along the class dim ``cd`` of an ``ndim``-D input."""
    shape = [1] * ndim
    shape[cd] = -1
    return w.view(shape)


def _targets(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(mask of the counted samples, class indices with the ignored ones set to 0)."""
    mask = target != ignore_index
    return mask, torch.where(mask, target, 0).long()


def _index_norm(red: str, mask: Tensor, safe: Tensor, w: Tensor | None, dtype: torch.dtype) -> Tensor | float:
    """'mean' over class indices divides by the summed target weight (the count without weight).

    An all-ignored batch has norm 0 (torch's loss is nan, its gradient zero): 1 keeps it zero.
    """
    if red != "mean":
        return 1.0
    norm = mask.to(dtype).sum() if w is None else (w[safe] * mask).sum()
    return torch.where(norm == 0, 1.0, norm)


_WEIGHTED_MEAN = (
    "a class-weighted mean: it divides by Σ_n w_(y_n), a sum over the batch, so no sample's term is its "
    "own; use reduction='sum' (and scale the learning rate) or no class weights"
)


class CrossEntropyLoss(ManualFunction):
    r"""Softmax cross entropy in one Function: ``apply(x, target, w, red, ignore_index, ε, probs)``.

    Returns ``(loss, log_softmax(x))``; the second is hidden (the backward uses it).
    grad_input = G/norm ⊙ (p Σ_c a − a), with ``a = w ⊙ y_s`` and ``p = softmax(x)``.
    """

    @staticmethod
    def forward(
        x: Tensor,
        target: Tensor,
        w: Tensor | None,
        red: str,
        ignore_index: int,
        eps: float,
        probs: bool,
    ) -> tuple[Tensor, Tensor]:
        x, w = _fp32(True, x, w)
        cd = 0 if x.dim() == 1 else 1
        n_classes = x.shape[cd] if x.dim() > cd else 1
        logp = torch.log_softmax(x, cd)
        if probs:
            (target,) = _fp32(True, target)
            if eps > 0:
                target = target * (1 - eps) + eps / n_classes
            prod = logp * target if w is None else logp * target * _class_view(w, x.dim(), cd)
            if red == "none":
                return -prod.sum(cd), logp
            if red == "sum":
                return -prod.sum(), logp
            return -prod.sum() / (x.numel() / n_classes if x.numel() else math.nan), logp
        nll = _nn.nll_loss_nd(logp, target, w, _Reduction.get_enum(red), ignore_index)
        if eps <= 0:
            return nll, logp
        mask, safe = _targets(target, ignore_index)
        smooth = -logp.sum(cd) if w is None else -(logp * _class_view(w, x.dim(), cd)).sum(cd)
        smooth = smooth.masked_fill(~mask, 0.0)
        if red == "mean":
            total = mask.sum() if w is None else (w[safe] * mask).sum()
            ret = smooth.sum() / total
        else:
            ret = smooth.sum() if red == "sum" else smooth
        return (1 - eps) * nll + ret * (eps / n_classes), logp

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _, target, w, red, ignore_index, eps, probs = inputs
        ctx.red, ctx.ignore_index, ctx.eps, ctx.probs = red, ignore_index, eps, probs
        ctx.set_materialize_grads(False)
        saved = (output[1], target, w)
        ctx.save_for_backward(*saved)
        if forward_ad_enabled():
            ctx.save_for_forward(*saved)

    @staticmethod
    def _coefficients(
        ctx: Any, logp: Tensor, target: Tensor, w: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | float, int]:
        """(y_s, a = w ⊙ y_s, norm, class dim) in ``logp``'s dtype."""
        cd = 0 if logp.dim() == 1 else 1
        n_classes, eps = logp.shape[cd], ctx.eps
        if ctx.probs:
            ys = target.to(logp.dtype)
            if eps > 0:
                # y_s = (1 − ε) y + ε / C
                ys = ys * (1 - eps) + eps / n_classes
            norm: Tensor | float = (logp.numel() / n_classes or 1.0) if ctx.red == "mean" else 1.0
        else:
            mask, safe = _targets(target, ctx.ignore_index)
            # y_s = (1 − ε) onehot(t) + ε / C on counted samples, 0 on ignored ones
            ys = torch.zeros_like(logp).scatter(cd, safe.unsqueeze(cd), 1.0 - max(eps, 0.0))
            if eps > 0:
                ys = ys + eps / n_classes
            ys = ys * mask.unsqueeze(cd)
            norm = _index_norm(ctx.red, mask, safe, w, logp.dtype)
        a = ys if w is None else ys * _class_view(w, logp.dim(), cd)
        return ys, a, norm, cd

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, grad_logp: Tensor | None) -> tuple[Tensor | None, ...]:
        logp0, target, w0 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if TAP.active is not None and w0 is not None and ctx.red == "mean" and not ctx.probs:
            TAP.active.reject_loss("cross_entropy", _WEIGHTED_MEAN)
        if grad_loss is None and grad_logp is None:
            return None, None, None, None, None, None, None
        dtype = (grad_loss if grad_loss is not None else grad_logp).dtype  # type: ignore[union-attr]
        logp = in_dtype(logp0, dtype)
        if grad_logp is None and w0 is None and not ctx.probs and ctx.eps <= 0 and ctx.red != "none":
            if not needs[0]:
                return None, None, None, None, None, None, None
            grad_index = _index_grad(grad_loss, logp.exp(), target, ctx.red, ctx.ignore_index)  # type: ignore[arg-type]
            return grad_index, None, None, None, None, None, None
        w = None if w0 is None else w0.to(dtype)
        p = logp.exp()
        grad_x = grad_t = grad_w = None
        if grad_loss is not None:
            ys, a, norm, cd = CrossEntropyLoss._coefficients(ctx, logp, target, w)
            # G = dC/dloss / norm, broadcast along the class dim
            G = grad_loss.unsqueeze(cd) if ctx.red == "none" else grad_loss / norm
            if needs[0]:
                # grad_input = G ⊙ (p Σ_c a − a)   (= G (p − y_s) for w = 1)
                grad_x = G * (p * a.sum(cd, keepdim=True) - a)
            if ctx.probs and needs[1]:
                # loss = −Σ_c w_c y_s,c log p_c, y_s = (1 − ε) y + ε/C: ∂/∂y = −(1 − ε) w log p
                coef = G * logp if w is None else G * logp * _class_view(w, logp.dim(), cd)
                grad_t = -(1 - max(ctx.eps, 0.0)) * coef
            if ctx.probs and needs[2]:
                # ∂loss/∂w_c = −Σ_{samples} G y_s,c log p_c
                dims = [d for d in range(logp.dim()) if d != cd]
                contrib = -(G * ys * logp)
                grad_w = contrib.sum(dims) if dims else contrib
        if grad_logp is not None and needs[0]:
            extra = _logp_grad(grad_logp, p)
            grad_x = extra if grad_x is None else grad_x + extra
        return grad_x, grad_t, grad_w, None, None, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor | None, t_t: Tensor | None, w_t: Tensor | None, *_: Any) -> tuple[Tensor, Tensor]:
        logp, target, w = ctx.saved_tensors
        ys, a, norm, cd = CrossEntropyLoss._coefficients(ctx, logp, target, w)
        p = logp.exp()
        logp_t = torch.zeros_like(logp) if x_t is None else _logp_tangent(x_t, p)
        # d(−Σ a log p) = −Σ a d log p − Σ (1 − ε) w ṫ log p − Σ y_s ẇ log p
        per = -(a * logp_t).sum(cd)
        if ctx.probs and t_t is not None:
            coef = t_t * (1 - max(ctx.eps, 0.0))
            coef = coef if w is None else coef * _class_view(w, logp.dim(), cd)
            per = per - (coef * logp).sum(cd)
        if ctx.probs and w_t is not None:
            per = per - (ys * _class_view(w_t, logp.dim(), cd) * logp).sum(cd)
        if ctx.red == "none":
            return per, logp_t
        return per.sum() / norm, logp_t


class CrossEntropyIndices(ManualFunction):
    r"""The usual classifier loss as a lean Function: ``apply(x, target, red, ignore_index)``.

    ``x`` of shape ``(N, C)``, class indices, no weight, no label smoothing, ``'mean'`` or ``'sum'``.
    Returns ``(loss, log_softmax(x))`` like :class:`CrossEntropyLoss` (the second is hidden and saved:
    the bytes torch saves), with a fraction of its per-call Python; grad_input = G ⊙ (p − onehot(t)).
    """

    @staticmethod
    def forward(x: Tensor, target: Tensor, red: str, ignore_index: int) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(x, 1)
        return _nn.nll_loss_nd(logp, target, None, 1 if red == "mean" else 2, ignore_index), logp

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _, target, ctx.red, ctx.ignore_index = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1], target)
        if forward_ad_enabled():
            ctx.save_for_forward(output[1], target)

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor | None, grad_logp: Tensor | None
    ) -> tuple[Tensor | None, None, None, None]:
        logp, target = ctx.saved_tensors
        if grad_logp is None:
            if grad_loss is None:
                return None, None, None, None
            if logp.is_cpu and plain_first_order(grad_loss):
                red, ignore_index = ctx.red, ctx.ignore_index
                calls = FUSION.sample()  # one compiled kernel once it pays, the lean ops until then
                if calls and FUSION.fits(grad_loss, logp, target):

                    def formula(grad_loss: Tensor, logp: Tensor, target: Tensor) -> Tensor:
                        return _index_grad(grad_loss, logp.exp(), target, red, ignore_index)

                    def eager(grad_loss: Tensor, logp: Tensor, target: Tensor) -> Tensor:
                        return _index_grad_eager(grad_loss, logp, target, red, ignore_index)

                    key = ("cross_entropy", red, ignore_index)
                    fused = FUSION.run(key, formula, grad_loss, logp, target, gain=0.5, eager=eager, calls=calls)
                    return fused[0], None, None, None
                return _index_grad_eager(grad_loss, logp, target, red, ignore_index), None, None, None
        p = logp.exp()
        grad_x = None if grad_loss is None else _index_grad(grad_loss, p, target, ctx.red, ctx.ignore_index)
        if grad_logp is not None:
            extra = _logp_grad(grad_logp, p)
            grad_x = extra if grad_x is None else grad_x + extra
        return grad_x, None, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor | None, *_: None) -> tuple[Tensor, Tensor]:
        logp, target = ctx.saved_tensors
        if x_t is None:
            return torch.zeros((), dtype=logp.dtype, device=logp.device), torch.zeros_like(logp)
        p = logp.exp()
        # d loss = Σ (∂loss/∂x) ẋ
        unit = torch.ones((), dtype=logp.dtype, device=logp.device)
        loss_t = (_index_grad(unit, p, target, ctx.red, ctx.ignore_index) * x_t).sum()
        return loss_t, _logp_tangent(x_t, p)


def _logp_grad(grad_logp: Tensor, p: Tensor) -> Tensor:
    """The gradient through the hidden ``log_softmax`` output: g − p Σ_c g along the class dim."""
    cd = 0 if p.dim() == 1 else 1
    return grad_logp - p * grad_logp.sum(cd, keepdim=True)


def _logp_tangent(x_t: Tensor, p: Tensor) -> Tensor:
    """The tangent of the hidden ``log_softmax`` output: d log p = ẋ − Σ_c p ẋ along the class dim."""
    cd = 0 if p.dim() == 1 else 1
    return x_t - (p * x_t).sum(cd, keepdim=True)


def _index_grad(grad_loss: Tensor, p: Tensor, target: Tensor, red: str, ignore_index: int) -> Tensor:
    """grad_input of cross entropy with class indices, no weight, no smoothing, 'mean' or 'sum', from
    ``p = softmax(x)``: G ⊙ (p − onehot(t)), G = dC/dloss / (number of counted targets) for 'mean'."""
    cd = 0 if p.dim() == 1 else 1
    n_classes = p.shape[cd]
    counted = target != ignore_index
    # G, per sample: 0 on ignored samples
    G = counted * (grad_loss / counted.sum().clamp_min(1) if red == "mean" else grad_loss)
    # onehot(t)_c = [c = t] along the class dim (an ignored target, where G = 0, clamped to a class)
    classes = torch.arange(n_classes, device=p.device).view(n_classes, *([1] * (p.dim() - cd - 1)))
    onehot = classes == target.clamp(0, n_classes - 1).unsqueeze(cd)
    # grad_input = G ⊙ (p − onehot(t))
    return G.unsqueeze(cd) * (p - onehot.to(p.dtype))


def _index_grad_eager(grad_loss: Tensor, logp: Tensor, target: Tensor, red: str, ignore_index: int) -> Tensor:
    """:func:`_index_grad`'s arithmetic op by op on CPU, outside grad mode and transforms (the eager side
    of the compiled kernel), from the saved log-probabilities of ``(N, C)`` logits: p = exp(log p) into a
    new buffer, p − onehot(t) as one in-place ``scatter_add_`` of −1, and a per-sample G only where a
    target is ignored (a scalar G otherwise): three passes over the logits' size where the onehot form
    takes seven."""
    p = logp.exp()  # softmax(x) = exp(log_softmax(x))
    counted = None if _none_ignored(target, ignore_index, p.shape[1]) else target != ignore_index
    n_counted = target.numel() if counted is None else int(counted.sum())  # a CPU tensor: no device sync
    index = (target if counted is None else target.clamp(0, p.shape[1] - 1)).unsqueeze(1)
    # p − onehot(t): −1 added at each sample's target class
    p.scatter_add_(1, index, p.new_full(index.shape, -1.0))
    G = grad_loss / max(n_counted, 1) if red == "mean" else grad_loss
    # grad_input = G ⊙ (p − onehot(t)), G = 0 on ignored samples
    return p.mul_(G if counted is None else (counted * G).unsqueeze(1))


def _none_ignored(target: Tensor, ignore_index: int, n_classes: int) -> bool:
    """Whether no target of a CPU tensor equals ``ignore_index``, in one reduction where ``ignore_index``
    lies outside the classes (the forward's ``nll_loss`` let only classes and ``ignore_index`` through)."""
    if target.numel() == 0:
        return True
    if ignore_index < 0:
        return int(target.min()) >= 0
    if ignore_index >= n_classes:
        return int(target.max()) < n_classes
    return not bool((target == ignore_index).any())


def _check_ce_target(fname: str, input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    if input.dim() == 0:
        raise ValueError("Expected 1 or more dimensions (got 0)")
    if target.is_floating_point() or target.dtype not in (torch.long, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_dtype_name(target)}")
    _no_grad_arg("nll_loss_forward", "weight", weight)


def _dtype_name(t: Tensor) -> str:
    """torch's C++ scalar type name (Float, Long, ...)."""
    return {
        torch.float32: "Float",
        torch.float64: "Double",
        torch.float16: "Half",
        torch.bfloat16: "BFloat16",
        torch.int64: "Long",
        torch.int32: "Int",
        torch.int16: "Short",
        torch.int8: "Char",
        torch.uint8: "Byte",
        torch.bool: "Bool",
    }.get(t.dtype, str(t.dtype))


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Cross entropy of logits ``input`` and class indices or probabilities (``F.cross_entropy``).

    The class dim is 1 (0 for unbatched ``(C,)`` input), any extra dims follow. The sample loss is
    :math:`-\sum_c w_c y_{s,c} \log\text{softmax}(x)_c` with the smoothed target
    :math:`y_s = (1 - \varepsilon) y + \varepsilon / C`; its gradient is computed in one step,

    .. math::
        \frac{\partial C}{\partial x} = \frac{G}{\text{norm}}
            \Big(\text{softmax}(x) \sum_c a_c - a\Big), \qquad a = w \odot y_s

    (:math:`(\text{softmax}(x) - y_s) / \text{norm}` without weight). ``'mean'`` divides by the
    summed weight of the counted targets (class indices) or the number of samples
    (probabilities). Probability targets and their ``weight`` are differentiable, as in torch.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> x = torch.zeros(2, 4, requires_grad=True)
        >>> MF.cross_entropy(x, torch.tensor([1, 3])).backward()
        >>> x.grad  # (softmax(x) − onehot) / N
        tensor([[ 0.1250, -0.3750,  0.1250,  0.1250],
                [ 0.1250,  0.1250,  0.1250, -0.3750]])
    """
    if (
        weight is None
        and label_smoothing == 0.0
        and size_average is None
        and reduce is None
        and (reduction == "mean" or reduction == "sum")
        and input.dim() == 2
        and target.dim() == 1
        and target.dtype == torch.long
        and (input.dtype == torch.float32 or input.dtype == torch.float64)
    ):
        return CrossEntropyIndices.call(input, target, reduction, ignore_index)[0]  # the usual classifier loss
    reduction = _enum_reduction(_legacy(size_average, reduce, reduction))
    if input.shape == target.shape:
        if not target.is_floating_point():
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got {_dtype_name(target)}"
            )
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        if label_smoothing > 1.0:
            raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")
        cd = 0 if input.dim() == 1 else 1
        if weight is not None and input.dim() > cd and weight.shape != (input.shape[cd],):
            raise RuntimeError(
                f"cross_entropy: weight tensor should be defined either for all "
                f"{input.shape[cd]} classes or no classes but got weight tensor of shape: "
                f"[{', '.join(str(s) for s in weight.shape)}]"
            )
        return CrossEntropyLoss.call(input, target, weight, reduction, ignore_index, label_smoothing, True)[0]
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")
    _check_ce_target("cross_entropy", input, target, weight)
    eps = label_smoothing if label_smoothing > 0.0 else 0.0
    return CrossEntropyLoss.call(input, target, weight, reduction, ignore_index, eps, False)[0]


class NLLLoss(ManualFunction):
    r"""Negative log likelihood: ``apply(x, target, w, red, ignore_index)``.

    loss_n = −w_{t_n} x_{n, t_n}; grad_input = −G w_t onehot(t) / norm (zero on ignored samples).
    """

    @staticmethod
    def forward(x: Tensor, target: Tensor, w: Tensor | None, red: str, ignore_index: int) -> Tensor:
        x, w = _fp32(True, x, w)
        return _nn.nll_loss_nd(x, target, w, _Reduction.get_enum(red), ignore_index)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, target, w, red, ignore_index = inputs
        ctx.red, ctx.ignore_index, ctx.shape = red, ignore_index, tuple(x.shape)
        ctx.save_for_backward(target, w)
        if forward_ad_enabled():
            ctx.save_for_forward(target, w)

    @staticmethod
    def _coefficient(ctx: Any, target: Tensor, w: Tensor | None, dtype: torch.dtype) -> Tensor:
        """c_n = −w_{t_n} ⋅ 1[t_n counted] / norm: loss_n = c_n x_{n, t_n} (before reduction)."""
        mask, safe = _targets(target, ctx.ignore_index)
        wt = mask.to(dtype) if w is None else w.to(dtype)[safe] * mask
        return -wt / _index_norm(ctx.red, mask, safe, w, dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        target, w = ctx.saved_tensors
        if TAP.active is not None and w is not None and ctx.red == "mean":
            TAP.active.reject_loss("nll_loss", _WEIGHTED_MEAN)
        cd = 0 if len(ctx.shape) == 1 else 1
        _, safe = _targets(target, ctx.ignore_index)
        # ∂loss/∂x_{n,c} = −w_{t_n} 1[c = t_n] / norm, times dC/dloss
        c = NLLLoss._coefficient(ctx, target, w, grad_output.dtype) * grad_output
        zeros = grad_output.new_zeros(ctx.shape)
        grad = zeros.scatter(cd, safe.unsqueeze(cd), c.expand(target.shape).unsqueeze(cd))
        return grad, None, None, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> Tensor:
        target, w = ctx.saved_tensors
        cd = 0 if len(ctx.shape) == 1 else 1
        _mask, safe = _targets(target, ctx.ignore_index)
        # d loss_n = c_n ẋ_{n, t_n}
        per = NLLLoss._coefficient(ctx, target, w, x_t.dtype) * x_t.gather(cd, safe.unsqueeze(cd)).squeeze(cd)
        return per if ctx.red == "none" else per.sum()


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Negative log likelihood of log-probabilities ``input`` (``F.nll_loss``).

    :math:`\ell_n = -w_{t_n} x_{n, t_n}`; ``'mean'`` divides by :math:`\sum_n w_{t_n}` over the
    samples whose target is not ``ignore_index``. Gradient:
    :math:`\partial\ell_n/\partial x_{n,c} = -w_{t_n} [c = t_n]`.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.nll_loss(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([0, 1]))
        tensor(2.5000)
    """
    reduction = _enum_reduction(_legacy(size_average, reduce, reduction))
    _check_ce_target("nll_loss", input, target, weight)
    return NLLLoss.call(input, target, weight, reduction, ignore_index)
