r"""The softmax family (``softmax``, ``softmin``, ``log_softmax``) and ``glu``.

A softmax mixes the elements of a slice, so its Jacobian is not diagonal; the backward is the
Jacobian-vector product, with :math:`y` the output and :math:`g = \partial C / \partial y`:

.. math::
    \frac{\partial y_i}{\partial x_j} = y_i(\delta_{ij} - y_j)
    \quad\Rightarrow\quad
    \frac{\partial C}{\partial x} = y \odot \Big(g - \sum_{\text{dim}} g \odot y\Big)

.. math::
    \log y_i = x_i - \log\textstyle\sum_j e^{x_j}
    \quad\Rightarrow\quad
    \frac{\partial C}{\partial x} = g - e^{\log y} \sum_{\text{dim}} g

``softmin(x) = softmax(-x)`` flips the sign of the softmax gradient. ``glu`` splits the input into
halves :math:`a, b` and computes :math:`a \odot s(b)` (:math:`s` the logistic sigmoid):

.. math::
    \frac{\partial C}{\partial a} = g \odot s(b), \qquad
    \frac{\partial C}{\partial b} = g \odot a \odot s(b)\,(1 - s(b))

Each backward saves the output where its formula uses it (softmax, softmin, log_softmax) and the
input otherwise (glu), and is built from differentiable torch ops, so double backward works.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import ManualFunction, forward_ad_enabled

__all__ = ["GLU", "LogSoftmax", "Softmax", "Softmin", "glu", "log_softmax", "softmax", "softmin"]


def _get_softmax_dim(name: str, ndim: int, stacklevel: int) -> int:
    """torch's implicit-dim choice (deprecated): dim 0 for 0-, 1- and 3-D input, else dim 1."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def softmax_grad(g: Tensor, y: Tensor, dim: int) -> Tensor:
    """grad_input = y ⊙ (g − Σ_dim g ⊙ y)   (J = diag(y) − y yᵀ is symmetric: also the JVP)."""
    return y * (g - (g * y).sum(dim, keepdim=True))


def log_softmax_grad(g: Tensor, y: Tensor, dim: int) -> Tensor:
    """grad_input = g − exp(y) Σ_dim g   (y = log_softmax(x); the JVP is ẋ − Σ_dim exp(y) ⊙ ẋ)."""
    return g - y.exp() * g.sum(dim, keepdim=True)


class Softmax(ManualFunction):
    """``y = softmax(±x, dim)`` (``negate`` for softmin); backward ``±y ⊙ (g − Σ_dim g ⊙ y)``.

    ``apply(x, dim, dtype, negate)``: ``dtype`` casts the input first, as torch's ``dtype=``.
    """

    @staticmethod
    def forward(x: Tensor, dim: int, dtype: torch.dtype | None, negate: bool) -> Tensor:
        return (-x if negate else x).softmax(dim, dtype=dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, dim, _, negate = inputs
        ctx.dim, ctx.negate = dim, negate
        ctx.save_for_backward(output)
        if forward_ad_enabled():
            ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (y,) = ctx.saved_tensors
        # grad_input = y ⊙ (g − Σ_dim g ⊙ y); softmin: y = softmax(−x) adds the chain factor −1
        grad = softmax_grad(grad_output, y.to(grad_output.dtype), ctx.dim)
        return (-grad if ctx.negate else grad), None, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> Tensor:
        (y,) = ctx.saved_tensors
        x_t = x_t.to(y.dtype)
        # ẏ = y ⊙ (±ẋ − Σ_dim y ⊙ ±ẋ)
        return softmax_grad(-x_t if ctx.negate else x_t, y, ctx.dim)


class Softmin(Softmax):
    """``y = softmax(−x, dim)``: :class:`Softmax` with ``negate=True`` (its own node name)."""


class LogSoftmax(ManualFunction):
    """``y = log_softmax(x, dim)``; backward ``g − exp(y) Σ_dim g``. ``apply(x, dim, dtype)``."""

    @staticmethod
    def forward(x: Tensor, dim: int, dtype: torch.dtype | None) -> Tensor:
        return x.log_softmax(dim, dtype=dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        if forward_ad_enabled():
            ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (y,) = ctx.saved_tensors
        # grad_input = g − exp(y) Σ_dim g
        return log_softmax_grad(grad_output, y.to(grad_output.dtype), ctx.dim), None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> Tensor:
        (y,) = ctx.saved_tensors
        x_t = x_t.to(y.dtype)
        # ẏ = ẋ − Σ_dim exp(y) ⊙ ẋ
        return x_t - (y.exp() * x_t).sum(ctx.dim, keepdim=True)


def _check_input(fname: str, input: Any) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fname}(): argument 'input' must be Tensor, not {type(input).__name__}")


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None) -> Tensor:
    r"""Apply :math:`\text{Softmax}(x_i) = \frac{\exp(x_i)}{\sum_j \exp(x_j)}` along ``dim``.

    Like ``torch.nn.functional.softmax``; backward ``y ⊙ (g − Σ_dim g ⊙ y)``.

    Args:
        input: any shape.
        dim: the dimension the slices sum to 1 along (``None``: torch's deprecated implicit choice).
        dtype: if given, the input is cast to it before the operation.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.softmax(torch.zeros(2, 4), dim=1)
        tensor([[0.2500, 0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500, 0.2500]])
    """
    _check_input("softmax", input)
    if dim is None:
        dim = _get_softmax_dim("softmax", input.dim(), _stacklevel)
    return Softmax.call(input, dim, dtype, False)


def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None) -> Tensor:
    r"""Apply :math:`\text{Softmin}(x) = \text{Softmax}(-x)` along ``dim`` (``F.softmin``).

    Backward ``−y ⊙ (g − Σ_dim g ⊙ y)``.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.softmin(torch.tensor([0.0, 0.0]), dim=0)
        tensor([0.5000, 0.5000])
    """
    _check_input("softmin", input)
    if dim is None:
        dim = _get_softmax_dim("softmin", input.dim(), _stacklevel)
    return Softmin.call(input, dim, dtype, True)


def log_softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Apply :math:`\log\text{Softmax}(x_i) = x_i - \log\sum_j \exp(x_j)` along ``dim``.

    Like ``torch.nn.functional.log_softmax``; backward ``g − exp(y) Σ_dim g``.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.log_softmax(torch.zeros(2), dim=0)
        tensor([-0.6931, -0.6931])
    """
    _check_input("log_softmax", input)
    if dim is None:
        dim = _get_softmax_dim("log_softmax", input.dim(), _stacklevel)
    return LogSoftmax.call(input, dim, dtype)


class GLU(ManualFunction):
    r"""``y = a ⊙ s(b)`` with ``a, b`` the halves of ``x`` along ``dim``. ``apply(x, dim)``.

    grad_a = g ⊙ s(b), grad_b = g ⊙ a ⊙ s(b)(1 − s(b)).
    """

    @staticmethod
    def forward(x: Tensor, dim: int) -> Tensor:
        return F.glu(x, dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, dim = inputs
        ctx.dim = dim
        ctx.save_for_backward(x)
        if forward_ad_enabled():
            ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        (x,) = ctx.saved_tensors
        a, b = x.to(grad_output.dtype).chunk(2, ctx.dim)
        s = torch.sigmoid(b)
        # grad_a = g ⊙ s(b)
        grad_a = grad_output * s
        # grad_b = g ⊙ a ⊙ s(b)(1 − s(b))
        grad_b = grad_a * a * (1 - s)
        return torch.cat([grad_a, grad_b], ctx.dim), None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, _: Any) -> Tensor:
        (x,) = ctx.saved_tensors
        a, b = x.chunk(2, ctx.dim)
        a_t, b_t = x_t.to(x.dtype).chunk(2, ctx.dim)
        s = torch.sigmoid(b)
        # ẏ = ȧ ⊙ s(b) + a ⊙ s(b)(1 − s(b)) ⊙ ḃ
        return s * (a_t + a * (1 - s) * b_t)


def glu(input: Tensor, dim: int = -1) -> Tensor:
    r"""Apply the gated linear unit :math:`\text{GLU}(a, b) = a \otimes \sigma(b)` (``F.glu``).

    ``input`` is split in half along ``dim`` into :math:`a` and :math:`b`; its size there must be
    even.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.glu(torch.tensor([2.0, 0.0]))
        tensor([1.])
    """
    _check_input("glu", input)
    if input.dim() == 0:
        raise RuntimeError("glu does not support scalars because halving size must be even")
    return GLU.call(input, dim)
