r"""Elementwise activations (one Function for the whole registry), PReLU and dropout.

Every activation applies the spec's activation-layer derivative

.. math::
    \frac{\partial C}{\partial z} = \frac{\partial C}{\partial a} \odot \sigma'(z)

with the :math:`\sigma'` of its :data:`~manualgrad.activations.ACTIVATIONS` entry. The functions
``relu``, ``leaky_relu``, ... of this module are generated from the registry with torch's exact
signatures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from manualgrad.activations import ACTIVATIONS, Activation

from ._common import TAP, ManualFunction, check_same_device_dtype, forward_ad_enabled, shape_str

__all__ = ["Dropout", "Elementwise", "ElementwiseInplace", "PReLU", "activation", "dropout", "prelu", *ACTIVATIONS]


class Elementwise(ManualFunction):
    """``a = σ(z)`` for any registry entry, out of place; backward ``grad_input = grad_output ⊙ σ'``.

    ``apply(z, act, params)`` returns ``a``. Saves ``a`` or ``z``, whichever σ' is a function of.
    """

    @staticmethod
    def forward(x: Tensor, act: Activation, params: tuple[Any, ...]) -> Tensor:
        return act.forward(x, *params)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, act, params = inputs
        ctx.act, ctx.params = act, params
        saved = output if act.saves == "output" else x
        ctx.save_for_backward(saved)
        if forward_ad_enabled():
            ctx.save_for_forward(saved)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        (saved,) = ctx.saved_tensors
        # grad_input = dC/da ⊙ σ'(z)
        return ctx.act.backward(grad_output, saved, *ctx.params), None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> Tensor:
        (saved,) = ctx.saved_tensors
        return ctx.act.grad(x_t, saved, *ctx.params)  # diagonal Jacobian: da = σ'(z) ⊙ dz


class ElementwiseInplace(ManualFunction):
    """:class:`Elementwise` in place (``inplace=True``): ``z`` is overwritten with ``σ(z)``.

    ``apply(z, act, params)`` returns ``(a,)``, or ``(a, z_copy)`` where the derivative needs the
    overwritten input (the copy is what the backward reads).
    """

    @staticmethod
    def forward(x: Tensor, act: Activation, params: tuple[Any, ...]) -> tuple[Tensor, ...]:
        if act.saves == "output":
            y = act.apply_(x, *params)
            return (y if y is x else x.copy_(y),)
        z = x.clone()
        return x.copy_(act.forward(z, *params)), z

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, act, params = inputs
        ctx.act, ctx.params = act, params
        ctx.set_materialize_grads(False)
        ctx.mark_dirty(x)
        ctx.save_for_backward(output[-1])  # a, or the copy of z
        if forward_ad_enabled():
            ctx.save_for_forward(output[-1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, grad_z: Tensor | None = None) -> tuple[Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        grad = None
        if grad_output is not None:
            # grad_input = dC/da ⊙ σ'(z)
            grad = ctx.act.backward(grad_output, saved, *ctx.params)
        if grad_z is not None:
            grad = grad_z if grad is None else grad + grad_z
        return grad, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> tuple[Tensor, ...]:
        (saved,) = ctx.saved_tensors
        y_t = ctx.act.grad(x_t, saved, *ctx.params)  # diagonal Jacobian: da = σ'(z) ⊙ dz
        if ctx.act.saves == "output":
            return (x_t.copy_(y_t),)
        z_t = x_t.clone()
        return x_t.copy_(y_t), z_t


def activation(input: Tensor, act: Activation | str, *params: Any, inplace: bool = False) -> Tensor:
    """Apply the registry activation ``act`` (an entry or its name) with its params.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> MF.activation(torch.tensor([-1.0, 2.0]), "leaky_relu", 0.1)
        tensor([-0.1000,  2.0000])
    """
    entry = ACTIVATIONS[act] if isinstance(act, str) else act
    if not isinstance(input, Tensor):
        raise TypeError(f"{entry.name}(): argument 'input' must be Tensor, not {type(input).__name__}")
    if params != entry.defaults:
        params = entry.normalise(*params)
    if inplace:
        return ElementwiseInplace.call(input, entry, params)[0]
    return Elementwise.call(input, entry, params)


def _make_function(act: Activation) -> Any:
    """Build ``def relu(input, inplace=False)``-style functions with torch's exact signatures."""
    sig = ["input"]
    for p in act.params:
        sig.append(p.name if p.required else f"{p.name}={p.default!r}")
    if act.inplace:
        sig.append("inplace=False")
    args = ", ".join(p.name for p in act.params)
    src = (
        f"def {act.name}({', '.join(sig)}):\n"
        f"    return activation(input, _act, {args}{',' if args else ''} "
        f"inplace={'inplace' if act.inplace else 'False'})\n"
    )
    namespace: dict[str, Any] = {"activation": activation, "_act": act}
    exec(src, namespace)
    fn = namespace[act.name]
    fn.__module__ = __name__
    fn.__qualname__ = act.name
    fn.__doc__ = (
        f"Apply :math:`{act.formula}` elementwise with manualgrad's gradient "
        f"(``torch.nn.functional.{act.name}``).\n\nThe derivative: ``{act.grad.__name__}``"
        f" — {(act.grad.__doc__ or '').strip()}\n"
    )
    return fn


for _act in ACTIVATIONS.values():
    globals()[_act.name] = _make_function(_act)


def __getattr__(name: str) -> Any:  # for type checkers: the generated functions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# PReLU: LeakyReLU with a learnable slope, one or one per channel (dim 1).
# ---------------------------------------------------------------------------------------------


def _per_channel(w: Tensor, x: Tensor) -> Tensor:
    """View ``w`` so it broadcasts over ``x``'s channel dim (dim 1; 1-D input has one channel)."""
    if w.numel() == 1 or x.dim() < 2:
        return w.reshape(())
    return w.reshape(1, -1, *([1] * (x.dim() - 2)))


class PReLU(ManualFunction):
    r"""``a = z if z > 0 else w·z`` with a learnable ``w``.

    grad_input = grad_output ⊙ (1 if z > 0 else w);
    grad_weight = Σ over all but the channel dim of grad_output ⊙ z ⊙ 1[z ≤ 0].
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        return F.prelu(x, weight)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)
        if forward_ad_enabled():
            ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        w = _per_channel(weight, x)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # grad_input = dC/da ⊙ (1 if z > 0 else w)
            grad_x = torch.where(x > 0, grad_output, grad_output * w)
        if ctx.needs_input_grad[1]:
            # grad_weight = Σ_{non-channel dims} dC/da ⊙ z ⊙ 1[z ≤ 0]
            contrib = torch.where(x > 0, 0.0, grad_output * x)
            if TAP.active is not None:  # per sample: the same sum over all but the batch (and channel) dim
                kept = (0,) if weight.numel() == 1 else (0, 1)
                dims = [d for d in range(x.dim()) if d not in kept]
                per_sample = contrib.sum(dims) if dims else contrib
                TAP.active.given(ctx, 1, per_sample.reshape(-1, *weight.shape), x.shape[:1])
            elif weight.numel() == 1:
                grad_w = contrib.sum().reshape(weight.shape)
            else:
                grad_w = contrib.sum([d for d in range(x.dim()) if d != 1]).reshape(weight.shape)
        return grad_x, grad_w

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor | None, w_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        w = _per_channel(weight, x)
        out = torch.zeros_like(x) if x_t is None else torch.where(x > 0, x_t, x_t * w)
        if w_t is not None:
            out = out + torch.where(x > 0, 0.0, _per_channel(w_t, x) * x)
        return out


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    r"""Apply :math:`\text{PReLU}(x) = \max(0, x) + w \min(0, x)` (``torch.nn.functional.prelu``)."""
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() != 1 and weight.numel() != channels:
        raise RuntimeError(
            f"prelu(): expected weight with 1 element or one per channel ({channels} channels in "
            f"dim 1 of input of shape {shape_str(input)}), but got weight of shape {shape_str(weight)}"
        )
    check_same_device_dtype("prelu", input=input, weight=weight)
    return PReLU.call(input, weight)


# ---------------------------------------------------------------------------------------------
# Dropout: a = z ⊙ m / (1 − p), m ~ Bernoulli(1 − p); torch's CPU recipe, so the same seed draws
# the same mask as torch.nn.Dropout.
# ---------------------------------------------------------------------------------------------


class Dropout(ManualFunction):
    """``a = z ⊙ noise``, ``noise = m / (1 − p)``; backward ``grad_input = grad_output ⊙ noise``."""

    @staticmethod
    def forward(x: Tensor, p: float, inplace: bool) -> tuple[Tensor, Tensor]:
        # torch's CPU recipe (the same draws for the same seed); p = 1 keeps nothing
        noise = torch.zeros_like(x) if p == 1.0 else torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
        return (x.mul_(noise) if inplace else x * noise), noise

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, _, inplace = inputs
        if inplace:
            ctx.mark_dirty(x)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        if forward_ad_enabled():
            ctx.save_for_forward(output[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _: Any = None) -> tuple[Tensor, None, None]:
        (noise,) = ctx.saved_tensors
        # grad_input = dC/da ⊙ m / (1 − p)
        return grad_output * noise, None, None

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor, *_: Any) -> tuple[Tensor, None]:
        (noise,) = ctx.saved_tensors
        return x_t * noise, None


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)`` (``F.dropout``)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    return Dropout.call(input, p, inplace)[0]
