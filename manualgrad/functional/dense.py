r"""Dense layers: ``linear``, a fused stack of Linear+activation layers, and ``bilinear``.

The spec's dense-layer derivatives, per sample, with :math:`\delta = \partial C / \partial z`:

.. math::
    \frac{\partial C}{\partial W} = \delta \, (a^{L-1})^T, \qquad
    \frac{\partial C}{\partial b} = \delta, \qquad
    \frac{\partial C}{\partial a^{L-1}} = W^T \delta

In batched row-major form (rows are samples, ``X: (N, in)``, ``W: (out, in)`` as in ``nn.Linear``)
the per-sample sums become matrix products over the batch:

.. math::
    \text{grad\_weight} = \delta^T X, \qquad
    \text{grad\_bias} = \textstyle\sum_n \delta_n, \qquad
    \text{grad\_input} = \delta W

One Function, :class:`DenseStack`, computes any run of Linear layers, each optionally followed by
an activation of :data:`manualgrad.activations.ACTIVATIONS`; ``linear`` is the run of one layer
without activation. The fused run (``Linear → ReLU → Linear → ...``) costs one Function call
instead of one per layer, applies each activation in place on the fresh pre-activation and
computes exactly the same gradients as the separate ops (both call the same formulas below).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from manualgrad.activations import Activation
from manualgrad.fusion import FUSION

from ._common import TAP, ManualFunction, check_same_device_dtype, forward_ad_enabled, in_dtype, shape_str

__all__ = ["DenseStack", "Linear", "bilinear", "dense_stack", "linear"]

Layer = tuple[Activation | None, tuple[Any, ...]]
"""One layer of a stack: its activation (``None`` for none) and the activation's params."""


# ---------------------------------------------------------------------------------------------
# The formulas.
# ---------------------------------------------------------------------------------------------


def rows(t: Tensor) -> Tensor:
    """``t`` as a matrix of samples: every leading dim folded into rows (a 1-D ``t`` is one row)."""
    if t.dim() == 2:
        return t
    n = t.shape[-1]
    return t.reshape(-1 if n and t.numel() else math.prod(t.shape[:-1]), n)


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """z = X Wᵀ + b, for any leading dims (never a view: the Function returns it)."""
    if x.dim() == 2:
        return F.linear(x, weight, bias)  # torch's addmm(b, X, Wᵀ), in one call
    z = torch.matmul(x, weight.t())
    return z if bias is None else z.add_(bias)


def grad_weight(delta: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """grad_weight = δᵀ X   (dC/dW = δ (a^{L-1})ᵀ, summed over the rows).

    Rows ``(R, out)`` and ``(R, in)`` give the layer's gradient; batches of rows ``(N, T, out)`` and
    ``(N, T, in)`` give one ``δ_nᵀ X_n`` per sample (:mod:`manualgrad.per_sample`), written into
    ``out`` where given."""
    if delta.dim() == 2:
        return delta.t().mm(x)
    return delta.mT.matmul(x) if out is None else torch.matmul(delta.mT, x, out=out)


def grad_bias(delta: Tensor) -> Tensor:
    """grad_bias = Σ_r δ_r   (dC/db = δ, summed over the rows; per sample for ``(N, T, out)``)."""
    return delta.sum(-2)


def grad_input(delta: Tensor, weight: Tensor) -> Tensor:
    """grad_input = δ W   (dC/da^{L-1} = Wᵀ δ, per sample)."""
    return delta.mm(weight)


def outer_rows(*factors: Tensor) -> Tensor:
    """A layer's effective input row by row: ``x`` for Linear, ``x1 ⊗ x2`` flattened for Bilinear
    (``y_k = x1ᵀ A_k x2`` is linear in ``x1 ⊗ x2``, so its ``grad_weight`` is ``δᵀ (x1 ⊗ x2)``)."""
    u = factors[0]
    for f in factors[1:]:
        u = (u.unsqueeze(-1) * f.unsqueeze(-2)).flatten(-2)
    return u


def tangent_z(dx: Tensor | None, x: Tensor, w: Tensor, dw: Tensor | None, db: Tensor | None) -> Tensor | None:
    """Forward mode: dz = dX Wᵀ + X dWᵀ + db."""
    dz = None if dx is None else dx.mm(w.t())
    if dw is not None:
        dz = x.mm(dw.t()) if dz is None else dz + x.mm(dw.t())
    if db is not None:
        dz = db.expand(x.shape[0], -1) if dz is None else dz + db
    return dz


# ---------------------------------------------------------------------------------------------
# One Linear layer: the three formulas and nothing around them.
# ---------------------------------------------------------------------------------------------


class Linear(ManualFunction):
    """``z = X Wᵀ + b`` for one layer, with the spec's dense-layer gradients.

    The lean form of a one-layer :class:`DenseStack` (what ``mnn.Linear`` and :func:`linear` call,
    the layer most models compose by hand): one output, ``X`` and ``W`` saved, and a backward that
    is just ``grad_input = δW``, ``grad_weight = δᵀX``, ``grad_bias = Σδ``.
    """

    forward = staticmethod(linear_forward)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)
        if forward_ad_enabled():
            ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        delta, h = grad_output, x  # δ = dC/dz and the layer's input, one row per sample
        if x.dim() != 2 or x.dtype is not delta.dtype or weight.dtype is not delta.dtype:
            # leading dims folded into rows; under autocast, the saved tensors in δ's dtype
            delta, h, weight = rows(delta), in_dtype(rows(x), delta.dtype), in_dtype(weight, delta.dtype)
        gx = grad_input(delta, weight) if needs[0] else None
        if gx is not None and x.dim() != 2:
            gx = gx.reshape(x.shape)
        if TAP.active is not None:  # per-sample terms: the context forms p.grad
            bias_at = 2 if len(ctx.next_functions) == 3 else None  # autograd's edges: the tensor inputs
            TAP.active.dense(ctx, 1, bias_at, delta, (h,), x.shape[:-1])
            return gx, None, None
        gw = grad_weight(delta, h) if needs[1] else None
        gb = grad_bias(delta) if needs[2] else None
        return gx, gw, gb

    @staticmethod
    def tangent(ctx: Any, x_t: Tensor | None, w_t: Tensor | None, b_t: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        h = rows(x)
        dz = tangent_z(None if x_t is None else rows(x_t), h, weight, w_t, b_t)
        if dz is None:
            dz = h.new_zeros(h.shape[0], weight.shape[0])
        return dz.reshape(*x.shape[:-1], weight.shape[0])


# ---------------------------------------------------------------------------------------------
# Where each layer's tensors live among the hidden outputs.
# ---------------------------------------------------------------------------------------------


def _layout(plan: tuple[Layer, ...]) -> tuple[tuple[int | None, int | None], ...]:
    """For each layer, the index (among the hidden outputs) of its ``z`` and of its ``a``.

    ``z`` is kept only when the activation's derivative needs its input; ``a`` is kept for every
    layer but the last (it is the next layer's input; the last ``a`` is the output itself).
    """
    slots: list[tuple[int | None, int | None]] = []
    n = 0
    for i, (act, _) in enumerate(plan):
        z_slot = None
        if act is not None and act.saves == "input":
            z_slot, n = n, n + 1
        a_slot = None
        if i < len(plan) - 1:
            a_slot, n = n, n + 1
        slots.append((z_slot, a_slot))
    return tuple(slots)


class DenseStack(ManualFunction):
    """``a_i = σ_i(a_{i-1} W_iᵀ + b_i)`` for a run of layers, with hand-derived gradients.

    ``apply(x, plan, save_dtype, w_1, b_1, ..., w_L, b_L)`` returns ``(output, *hidden)``; use
    :func:`dense_stack`, which returns the output alone.

    Saved for backward: the input ``x``, the weights, each hidden ``a`` (the next layer's input,
    which torch.nn's Linear saves too) and ``z`` only where the activation's derivative needs it;
    the output only where the last activation's derivative needs it. With ``save_dtype`` (e.g.
    ``torch.bfloat16``) the hidden tensors are saved in that compact dtype: less memory, slightly
    rounded gradients, first-order gradients only.

    On CPU, from ``FUSION.min_numel`` elements in the widest layer on, the first-order backward
    runs as one compiled graph of these same formulas (:data:`~manualgrad.fusion.FUSION`;
    ``FUSION.dense = False`` turns it off); elsewhere (double backward, functorch,
    ``torch.compile``, CUDA, small layers) it runs op by op. The forward always runs op by op,
    each activation in place on its fresh pre-activation: its compiled graph was measured slower
    (in one process, against the same stack with a compiled backward, on seven of eight
    configurations of this project's grid by 1–7 %, GELU within a point).
    """

    @staticmethod
    def forward(
        x: Tensor, plan: tuple[Layer, ...], save_dtype: torch.dtype | None, *params: Tensor | None
    ) -> tuple[Tensor, ...]:
        return _forward(x, plan, params)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, plan, save_dtype, *params = inputs
        out, *hidden = output
        ctx.plan, ctx.slots, ctx.save_dtype, ctx.out_shape = plan, _layout(plan), save_dtype, out.shape
        ctx.has_bias = tuple(b is not None for b in params[1::2])
        ctx.set_materialize_grads(False)
        last = plan[-1][0]
        keep_out = out if last is not None and last.saves == "output" else None
        if save_dtype is not None:
            hidden = [h.to(save_dtype) for h in hidden]
            keep_out = None if keep_out is None else keep_out.to(save_dtype)
        saved = (x, *params[0::2], keep_out, *hidden)
        ctx.save_for_backward(*saved)
        if forward_ad_enabled():
            ctx.save_for_forward(*saved)

    @staticmethod
    def _unpack(ctx: Any) -> tuple[Tensor, tuple[Tensor, ...], Tensor, tuple[Tensor, ...]]:
        saved = ctx.saved_tensors
        n = len(ctx.plan)
        return saved[0], saved[1 : n + 1], saved[n + 1], saved[n + 2 :]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor | None, *grad_hidden: Tensor | None) -> tuple[Tensor | None, ...]:
        if ctx.save_dtype is not None and torch.is_grad_enabled():
            raise RuntimeError(
                f"manualgrad: activations saved as {ctx.save_dtype} (save_dtype) give first-order gradients "
                "only; use save_dtype=None for double backward"
            )
        x, weights, out, hidden = DenseStack._unpack(ctx)
        plan, slots, needs = ctx.plan, ctx.slots, ctx.needs_input_grad
        tap = None if TAP.active is None else ctx  # per-sample terms go to the open context
        if tap is None and grad_output is not None and all(g is None for g in grad_hidden):
            fused = _fused_backward(plan, slots, needs, grad_output, x, weights, out, hidden)
            if fused is not None:
                return fused
        # the g this backward made itself (a grad_input product) may be overwritten in place, unless
        # a graph of the backward is being recorded (double backward)
        may_overwrite = not torch.is_grad_enabled()
        return _backward(plan, slots, needs, grad_output, grad_hidden, x, weights, out, hidden, may_overwrite, tap)

    @staticmethod
    def tangent(
        ctx: Any, x_t: Tensor | None, plan_t: None, dtype_t: None, *params_t: Tensor | None
    ) -> tuple[Tensor, ...]:
        x, weights, out, hidden = DenseStack._unpack(ctx)
        plan, slots = ctx.plan, ctx.slots
        hidden_t: list[Tensor | None] = [None] * len(hidden)
        h, dh = rows(x), (None if x_t is None else rows(x_t))
        for i, (act, p) in enumerate(plan):
            z_slot, a_slot = slots[i]
            dz = tangent_z(dh, h, weights[i], params_t[2 * i], params_t[2 * i + 1])
            if dz is None:
                dz = torch.zeros(h.shape[0], weights[i].shape[0], dtype=h.dtype, device=h.device)
            if z_slot is not None:
                hidden_t[z_slot] = dz.reshape(hidden[z_slot].shape)
            if act is not None:
                s = hidden[z_slot] if z_slot is not None else hidden[a_slot] if a_slot is not None else out
                dz = act.grad(dz, rows(s), *p)  # da = σ'(z) ⊙ dz: the Jacobian is diagonal
            if a_slot is not None:
                hidden_t[a_slot] = dz.reshape(hidden[a_slot].shape)
                h = rows(hidden[a_slot])
            dh = dz
        return (dh.reshape(ctx.out_shape), *hidden_t)  # type: ignore[union-attr,arg-type]


def _forward(x: Tensor, plan: tuple[Layer, ...], params: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
    """``(output, *hidden)`` of :class:`DenseStack`: ``a_i = σ_i(a_{i-1} W_iᵀ + b_i)``, layer by layer."""
    h = x
    hidden: list[Tensor] = []
    last = len(plan) - 1
    for i, (act, p) in enumerate(plan):
        z = linear_forward(h, params[2 * i], params[2 * i + 1])  # type: ignore[arg-type]
        if act is None:
            h = z
        elif act.saves == "output":
            h = act.apply_(z, *p)  # z is fresh: nobody else sees it before it is overwritten
        else:
            hidden.append(z)
            h = act.forward(z, *p)
        if i < last:
            hidden.append(h)
    return (h, *hidden)


def _backward(
    plan: tuple[Layer, ...],
    slots: tuple[tuple[int | None, int | None], ...],
    needs: tuple[bool, ...],
    grad_output: Tensor | None,
    grad_hidden: tuple[Tensor | None, ...],
    x: Tensor,
    weights: tuple[Tensor, ...],
    out: Tensor | None,
    hidden: tuple[Tensor, ...],
    may_overwrite: bool,
    tap: Any = None,
) -> tuple[Tensor | None, ...]:
    """The gradients of :class:`DenseStack`'s inputs, layer by layer from the last (its ``backward``).

    With ``tap`` (the backward node, while a per-sample context is open) each layer's δ and input go
    to the context instead of its weight and bias gradients."""
    grads: list[Tensor | None] = [None] * (3 + 2 * len(plan))
    # g is dC/da of the current layer; it becomes δ = dC/dz, then dC/da of the layer below.
    g = None if grad_output is None else rows(grad_output)
    owned = False  # whether g is this backward's own temporary (then it may be overwritten)
    for i in range(len(plan) - 1, -1, -1):
        act, p = plan[i]
        z_slot, a_slot = slots[i]
        g_a = None if a_slot is None else grad_hidden[a_slot]
        if g_a is not None:
            g_a = rows(g_a)
            g, owned = (g_a, False) if g is None else (g + g_a, True)
        if act is not None and g is not None:
            s = hidden[z_slot] if z_slot is not None else hidden[a_slot] if a_slot is not None else out
            s = in_dtype(rows(s), g.dtype)  # type: ignore[arg-type]
            # δ = dC/da ⊙ σ'(z)
            g = act.backward(g, s, *p, overwrite=owned and may_overwrite)
            owned = True
        g_z = None if z_slot is None else grad_hidden[z_slot]
        if g_z is not None:
            g_z = rows(g_z)
            g, owned = (g_z, False) if g is None else (g + g_z, True)
        if g is None:
            continue
        h = in_dtype(rows(x if i == 0 else hidden[slots[i - 1][1]]), g.dtype)  # type: ignore[index]
        if tap is not None:
            w_at = 1 + i + sum(tap.has_bias[:i])  # autograd's edges: x, then each weight and present bias
            b_at = w_at + 1 if tap.has_bias[i] else None
            TAP.active.dense(tap, w_at, b_at, g, (h,), x.shape[:-1], owned and may_overwrite)
        else:
            if needs[3 + 2 * i]:
                grads[3 + 2 * i] = grad_weight(g, h)
            if needs[4 + 2 * i]:
                grads[4 + 2 * i] = grad_bias(g)
        if i > 0 or needs[0]:
            g, owned = grad_input(g, in_dtype(weights[i], g.dtype)), True
    if needs[0] and g is not None:
        grads[0] = g.reshape(x.shape)
    return tuple(grads)


def _fusable(
    plan: tuple[Layer, ...], x: Tensor, weights: tuple[Tensor, ...] | list[Tensor], tensors: tuple[Tensor, ...]
) -> bool:
    """Whether a stack's backward on ``x`` runs as one compiled graph (:data:`~manualgrad.fusion.FUSION`):
    ``FUSION.dense`` on, more than a lone Linear (whose backward is its three products: nothing to
    fuse), ``FUSION.min_numel`` elements in the widest layer, and ``FUSION.usable``."""
    if not FUSION.dense or (len(plan) == 1 and plan[0][0] is None):
        return False
    n = x.shape[0] if x.dim() == 2 else math.prod(x.shape[:-1])
    return n * max(w.shape[0] for w in weights) >= FUSION.min_numel and FUSION.usable(*tensors)


def _gain(plan: tuple[Layer, ...]) -> float:
    """The fraction of a stack's eager time its compiled graph saves (for :meth:`FUSION.run
    <manualgrad.fusion._Fusion.run>`): the matrix products stay the same, so about 0.1 with one- or
    two-kernel activations (ReLU, Sigmoid, Tanh: measured 0.09 of the small MLP's step) and 0.3 where
    an activation is a multi-op formula that becomes one loop (GELU's dozen steps: 0.21 of the step)."""
    return 0.3 if any(act is not None and act.grad_ is None for act, _ in plan) else 0.1


def _fused_backward(
    plan: tuple[Layer, ...],
    slots: tuple[tuple[int | None, int | None], ...],
    needs: tuple[bool, ...],
    grad_output: Tensor,
    x: Tensor,
    weights: tuple[Tensor, ...],
    out: Tensor | None,
    hidden: tuple[Tensor, ...],
) -> tuple[Tensor | None, ...] | None:
    """:func:`_backward` through :meth:`FUSION.run <manualgrad.fusion._Fusion.run>` (one compiled graph once
    the shape has paid for its compile), where :func:`_fusable`; ``None`` where not.

    The same formulas, traced: the matrix products stay torch's, the activation derivatives and bias
    sums become fused loops, and the whole backward is one call instead of a dozen Python-dispatched
    ops (their dispatch costs about as much as a small layer's arithmetic).
    """
    calls = FUSION.sample()  # most calls, before any kernel exists: straight to the eager formulas
    if not calls:
        return None
    tensors = (grad_output, x, *weights, *hidden) if out is None else (grad_output, x, *weights, out, *hidden)
    if not _fusable(plan, x, weights, tensors):
        return None
    n_layers, has_out = len(plan), out is not None

    def formula(g: Tensor, x: Tensor, *t: Tensor) -> tuple[Tensor, ...]:
        ws, rest = t[:n_layers], t[n_layers:]
        o, hs = (rest[0], rest[1:]) if has_out else (None, rest)
        grads = _backward(plan, slots, needs, g, (None,) * len(hs), x, ws, o, hs, True)
        return tuple(g for g in grads if g is not None)

    computed = iter(FUSION.run(("dense_backward", plan, needs), formula, *tensors, gain=_gain(plan), calls=calls))
    return tuple(next(computed) if need else None for need in needs)


def _fits(features: int, dtype: torch.dtype, device: torch.device, weight: Tensor, bias: Tensor | None) -> bool:
    """The common case of a Linear layer, checked cheaply: a 2-D weight taking ``features`` inputs,
    a matching bias, one dtype and device (``features`` is -1 for an input without dims)."""
    w_shape = weight.shape
    return (
        len(w_shape) == 2
        and w_shape[1] == features
        and weight.dtype == dtype
        and weight.device == device
        and (bias is None or (bias.shape == w_shape[:1] and bias.dtype == dtype and bias.device == device))
    )


def _check_linear(
    fname: str, input: Tensor, weight: Tensor, bias: Tensor | None, shape: torch.Size | None = None
) -> None:
    """Torch-style errors for a Linear layer where :func:`_fits` found it outside the common case (an
    error, or autocast's dtypes); ``shape`` is the layer's input shape inside a stack."""
    shape = input.shape if shape is None else shape
    if weight.dim() != 2:
        raise RuntimeError(
            f"{fname}(): expected weight to be 2-D (out_features, in_features), but got weight of shape "
            f"{shape_str(weight)}"
        )
    if len(shape) == 0 or shape[-1] != weight.shape[1]:
        raise RuntimeError(
            f"{fname}(): expected input of shape [*, {weight.shape[1]}] to match weight of shape "
            f"{shape_str(weight)}, but got input of shape {shape_str(shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(
            f"{fname}(): expected bias of shape [{weight.shape[0]}] to match weight of shape "
            f"{shape_str(weight)}, but got bias of shape {shape_str(bias)}"
        )
    check_same_device_dtype(fname, input=input, weight=weight, bias=bias)


def check_stack(input: Tensor, params: list[Tensor | None]) -> None:
    """Torch-style errors for a run of Linear layers, ``params`` = ``[w_1, b_1, ..., w_L, b_L]``."""
    shape = input.shape
    features, dtype, device = (shape[-1] if shape else -1), input.dtype, input.device
    for i in range(0, len(params), 2):
        weight, bias = params[i], params[i + 1]
        if not _fits(features, dtype, device, weight, bias):  # type: ignore[arg-type]
            layer_shape = shape if i == 0 else torch.Size((*shape[:-1], features))
            _check_linear("linear", input, weight, bias, layer_shape)  # type: ignore[arg-type]
        features = weight.shape[0]  # type: ignore[union-attr]


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Apply :math:`y = x W^T + b` with manualgrad's gradients (``torch.nn.functional.linear``).

    Args:
        input: :math:`(*, H_{in})`, any number of leading dims, also none (unbatched).
        weight: :math:`(H_{out}, H_{in})`.
        bias: :math:`(H_{out})` or ``None``.

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> x, w = torch.ones(2, 3), torch.ones(4, 3, requires_grad=True)
        >>> MF.linear(x, w).sum().backward()
        >>> w.grad  # δᵀX with δ = 1
        tensor([[2., 2., 2.],
                [2., 2., 2.],
                [2., 2., 2.],
                [2., 2., 2.]])
    """
    shape = input.shape
    if not _fits(shape[-1] if shape else -1, input.dtype, input.device, weight, bias):
        _check_linear("linear", input, weight, bias)
    return Linear.call(input, weight, bias)


def dense_stack(
    input: Tensor,
    plan: tuple[Layer, ...],
    params: tuple[tuple[Tensor, Tensor | None], ...],
    save_dtype: torch.dtype | None = None,
) -> Tensor:
    """Run ``Linear → activation`` layers as one Function. ``params`` holds ``(weight, bias)`` per layer.

    Gives exactly the gradients of the layers applied one by one. ``save_dtype`` saves the hidden
    activations for backward in a compact dtype (see :class:`DenseStack`).

    Example:
        >>> import torch, manualgrad.functional as MF
        >>> from manualgrad.activations import ACTIVATIONS
        >>> w1, w2 = torch.randn(8, 4), torch.randn(3, 8)
        >>> plan = ((ACTIVATIONS["relu"], ()), (None, ()))
        >>> y = MF.dense_stack(torch.randn(5, 4), plan, ((w1, None), (w2, None)))
        >>> y.shape
        torch.Size([5, 3])
    """
    flat = [t for wb in params for t in wb]
    check_stack(input, flat)
    return DenseStack.call(input, plan, save_dtype, *flat)[0]


# ---------------------------------------------------------------------------------------------
# Bilinear.
# ---------------------------------------------------------------------------------------------


class Bilinear(ManualFunction):
    r"""``y_k = x_1ᵀ A_k x_2 + b_k`` with hand-derived gradients.

    grad_input1 = Σ_k δ_k A_k x_2, grad_input2 = Σ_k δ_k A_kᵀ x_1, grad_weight_k = Σ_n δ_{nk} x_1 x_2ᵀ,
    grad_bias = Σ_n δ_n.
    """

    @staticmethod
    def forward(x1: Tensor, x2: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return torch.bilinear(x1, x2, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x1, x2, weight, _ = inputs
        ctx.save_for_backward(x1, x2, weight)
        if forward_ad_enabled():
            ctx.save_for_forward(x1, x2, weight)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x1, x2, weight = (t.to(grad_output.dtype) for t in ctx.saved_tensors)
        needs = ctx.needs_input_grad
        g, a, b = rows(grad_output), rows(x1), rows(x2)
        g1 = g2 = gw = gb = None
        if needs[0] or needs[1]:
            # t[n, i, j] = Σ_k δ[n, k] A[k, i, j]
            t = g.mm(weight.flatten(1)).reshape(g.shape[0], *weight.shape[1:])
            if needs[0]:
                # grad_input1[n, i] = Σ_j t[n, i, j] x2[n, j]
                g1 = (t * b.unsqueeze(1)).sum(2).reshape(x1.shape)
            if needs[1]:
                # grad_input2[n, j] = Σ_i t[n, i, j] x1[n, i]
                g2 = (t * a.unsqueeze(2)).sum(1).reshape(x2.shape)
        if TAP.active is not None:  # per-sample terms: the context forms p.grad
            TAP.active.dense(ctx, 2, 3 if len(ctx.next_functions) == 4 else None, g, (a, b), x1.shape[:-1])
            return g1, g2, None, None
        if needs[2]:
            # grad_weight[k, i, j] = Σ_n δ[n, k] x1[n, i] x2[n, j]: δᵀU with U = x1 ⊗ x2, per row
            gw = grad_weight(g, outer_rows(a, b)).reshape(weight.shape)
        if needs[3]:
            # grad_bias = Σ_n δ_n
            gb = grad_bias(g)
        return g1, g2, gw, gb

    @staticmethod
    def tangent(ctx: Any, x1_t: Tensor | None, x2_t: Tensor | None, w_t: Tensor | None, b_t: Tensor | None) -> Tensor:
        x1, x2, weight = ctx.saved_tensors
        terms = []
        if x1_t is not None:
            terms.append(torch.bilinear(x1_t, x2, weight))
        if x2_t is not None:
            terms.append(torch.bilinear(x1, x2_t, weight))
        if w_t is not None:
            terms.append(torch.bilinear(x1, x2, w_t))
        out = sum(terms) if terms else torch.zeros(*x1.shape[:-1], weight.shape[0], dtype=x1.dtype, device=x1.device)
        return out + b_t if b_t is not None else out  # type: ignore[return-value]


def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Apply :math:`y = x_1^T A x_2 + b` with manualgrad's gradients (``torch.nn.functional.bilinear``).

    Args:
        input1: :math:`(*, H_{in1})`.
        input2: :math:`(*, H_{in2})`, the same leading dims as ``input1``.
        weight: :math:`(H_{out}, H_{in1}, H_{in2})`.
        bias: :math:`(H_{out})` or ``None``.
    """
    if weight.dim() != 3:
        raise RuntimeError(
            f"bilinear(): expected weight to be 3-D (out, in1, in2), but got weight of shape {shape_str(weight)}"
        )
    if input1.shape[:-1] != input2.shape[:-1] or input1.dim() == 0:
        raise RuntimeError(
            f"bilinear(): expected input1 and input2 to have the same leading dimensions, but got "
            f"input1 of shape {shape_str(input1)} and input2 of shape {shape_str(input2)}"
        )
    if input1.shape[-1] != weight.shape[1] or input2.shape[-1] != weight.shape[2]:
        raise RuntimeError(
            f"bilinear(): expected inputs of shapes [*, {weight.shape[1]}] and [*, {weight.shape[2]}] "
            f"to match weight of shape {shape_str(weight)}, but got input1 of shape "
            f"{shape_str(input1)} and input2 of shape {shape_str(input2)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(
            f"bilinear(): expected bias of shape [{weight.shape[0]}], but got bias of shape {shape_str(bias)}"
        )
    check_same_device_dtype("bilinear", input1=input1, input2=input2, weight=weight, bias=bias)
    return Bilinear.call(input1, input2, weight, bias)
