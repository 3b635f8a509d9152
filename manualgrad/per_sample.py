r"""Per-sample gradients, their norms and statistics, and per-sample clipping, from the spec's terms.

The spec derives every gradient for one sample, and a batched layer sums those terms:

.. math::
    \frac{\partial C_n}{\partial W} = \delta_n (a_n^{L-1})^T, \qquad
    \frac{\partial C_n}{\partial b} = \delta_n, \qquad
    \text{grad\_weight} = \textstyle\sum_n \delta_n (a_n^{L-1})^T = \delta^T X

Inside :class:`per_sample` or :class:`clip_per_sample` (context managers around ``backward()``) the
backward of each manualgrad layer with parameters (``Linear``, the fused ``DenseStack`` of
``mnn.Sequential``/``MLP``, ``Bilinear``, ``PReLU``) hands the context its δ (the rows of dC/dz)
and its input, the two factors of every sample's term, instead of summing them. Once the backward
is done the context forms what was asked from those factors, with the dense formulas of
:mod:`manualgrad.functional.dense` (``grad_weight``, ``grad_bias``) applied per sample or to
re-weighted rows:

* ``b_n``, sample n's term of a parameter's gradient: ``δ_nᵀ X_n`` (:class:`DenseSamples`); an input
  with extra dims ``(N, T, in)`` sums ``T`` rows per sample, a layer used twice adds its terms;
* norms without materialising any ``b_n``: ``‖b_n‖ = ‖δ_n‖ ‖x_n‖`` for one row per sample, the Gram
  form ``‖b_n‖² = Σ_{t,s} (δ_t·δ_s)(x_t·x_s)`` for ``T`` rows (or ``b_n`` itself where that is cheaper);
* clipping in one backward pass: with clip factors ``c_n`` from all layers' norms,
  ``Σ_n c_n g_n = (s c ⊙ δ)ᵀ X``: one matrix product per layer, as many as the plain gradient needs.

**Scaling.** With a loss that is a mean over the ``N`` samples of the batch, row ``n`` of δ carries
the mean's ``1/N``. :data:`grad_sample <GradSample>`, ``.norms`` and the clipping are about
``g_n = s·b_n``, the gradient of sample ``n``'s own loss term (Opacus's meaning): ``s = N`` for
``loss_reduction="mean"``, 1 for ``"sum"``. BackPACK's quantities (``batch_l2``,
``sum_grad_squared``, ``variance``) keep the ``1/N``: they are functions of ``b_n`` itself.

A sample must be dim 0 of every layer's input, and nothing may mix samples between the layers
(dropout is fine; batch statistics are not, and nothing here can see a parameter-free op that mixes
them). Trainable parameters must all be in manualgrad layers, and losses a plain per-sample sum or
mean (manualgrad's class-weighted ``'mean'`` cross entropy raises; torch's losses are not checked).
"""

from __future__ import annotations

import math
import sys
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from manualgrad._compat import graph_task_id, storage_use_count
from manualgrad.functional._common import TAP, in_dtype, shape_str
from manualgrad.functional.dense import grad_bias, grad_weight, outer_rows

__all__ = [
    "QUANTITIES",
    "BatchL2",
    "DenseSamples",
    "GivenSamples",
    "GradSample",
    "Quantity",
    "Rows",
    "Samples",
    "SumGradSquared",
    "Variance",
    "clip_per_sample",
    "per_sample",
]


# ---------------------------------------------------------------------------------------------
# One parameter's per-sample terms b_n, in the form that is cheapest to keep.
# ---------------------------------------------------------------------------------------------


class Samples:
    """The per-sample terms ``b_1 … b_N`` of one parameter's gradient (``Σ_n b_n`` is the gradient)."""

    shape: torch.Size
    dtype: torch.dtype
    _norm_sq_cache: Tensor | None = None

    def total(self, weights: Tensor | None = None) -> Tensor:
        """``Σ_n w_n b_n`` (``w = 1`` without ``weights``), of the parameter's shape."""
        raise NotImplementedError

    def each(self, scale: float = 1.0, out: Tensor | None = None) -> Tensor:
        """Every ``scale · b_n``: ``(N, *shape)`` (written into ``out`` where given)."""
        raise NotImplementedError

    def norm_sq(self) -> Tensor:
        """``‖b_n‖²`` for every sample: ``(N,)`` (computed once: the norms and ``batch_l2`` share it)."""
        if self._norm_sq_cache is None:
            self._norm_sq_cache = self._norm_sq()
        return self._norm_sq_cache

    def _norm_sq(self) -> Tensor:
        raise NotImplementedError

    def sum_sq(self) -> Tensor:
        """``Σ_n b_n ⊙ b_n``, of the parameter's shape."""
        raise NotImplementedError


def _as_shape(t: Tensor, shape: torch.Size) -> Tensor:
    """``t`` reshaped to ``shape``, without a call into torch where it has it already (between a
    backward's large products even a no-op costs microseconds)."""
    return t if t.shape == shape else t.reshape(shape)


def _sq_norms(t: Tensor) -> Tensor:
    """``‖t_i‖²`` over the last dim, in one reduction (no squared temporary)."""
    return torch.linalg.vector_norm(t, dim=-1).square()


class Rows:
    """δ of one layer call, shared by its weight's and its bias's terms, with what both need computed
    once: ``‖δ_{n,t}‖²`` and the re-weighted rows ``w_n δ_{n,t}``.

    Kept as the layer gave it, rows ``(N·T, out)`` (``flat``), ``T`` rows per sample; ``delta`` is the
    ``(N, T, out)`` view, made where it is needed (inputs with extra dims, ``grad_sample``).
    ``owned``: δ is the backward's own temporary (the fused stack's), which nothing else can see: it is
    re-weighted in place (no second copy of δ), once its norms are taken.
    """

    def __init__(self, flat: Tensor, n: int, t: int, owned: bool = False) -> None:
        self.flat, self.n, self.t, self.owned = flat, n, t, owned
        self._delta: Tensor | None = None
        self._sq: Tensor | None = None
        self._weighted: tuple[Tensor | None, Tensor | None] = (None, None)

    @property
    def delta(self) -> Tensor:
        """``(N, T, out)``."""
        if self._delta is None:
            self._delta = self.flat.reshape(self.n, self.t, self.flat.shape[-1])
        return self._delta

    def sq_norms(self) -> Tensor:
        """``‖δ_{n,t}‖²``: ``(N, T)``."""
        if self._sq is None:
            self._sq = _sq_norms(self.delta)
        return self._sq

    def weighted(self, weights: Tensor | None) -> Tensor:
        """``w_n δ_{n,t}`` as rows ``(N·T, out)`` (``δ`` itself without ``weights``)."""
        if weights is None:
            return self.flat
        if self._weighted[0] is not weights:
            w = in_dtype(weights, self.flat.dtype)
            if self.t == 1:  # one row per sample
                w, d = w[:, None], self.flat
            else:
                w, d = w[:, None, None], self.delta
            d = d.mul_(w) if self.owned else d * w
            self._weighted = (weights, d if self.t == 1 else d.reshape(-1, d.shape[-1]))
        return self._weighted[1]  # type: ignore[return-value]


class DenseSamples(Samples):
    r"""The terms of a dense layer's weight or bias, kept as their factors.

    ``b_n = Σ_t δ_{n,t} u_{n,t}ᵀ`` for a weight, with ``u = x`` (Linear) or ``x1 ⊗ x2`` (Bilinear,
    one factor each), and ``b_n = Σ_t δ_{n,t}`` for a bias (no factors).

    Args:
        rows: δ (:class:`Rows`): ``T`` rows per sample (1 for a 2-D input).
        flat_factors: the layer's inputs as rows, each ``(N·T, d)``; none for a bias (``factors``:
            the same as ``(N, T, d)``).
        shape: the parameter's shape.
    """

    def __init__(self, rows: Rows, flat_factors: tuple[Tensor, ...], shape: torch.Size) -> None:
        self.rows, self.flat_factors, self.shape, self.dtype = rows, flat_factors, shape, rows.flat.dtype
        self._factors: tuple[Tensor, ...] | None = None

    @property
    def delta(self) -> Tensor:
        return self.rows.delta

    @property
    def factors(self) -> tuple[Tensor, ...]:
        if self._factors is None:
            n, t = self.rows.n, self.rows.t
            self._factors = tuple(f.reshape(n, t, f.shape[-1]) for f in self.flat_factors)
        return self._factors

    def total(self, weights: Tensor | None = None) -> Tensor:
        d = self.rows.weighted(weights)
        if not self.flat_factors:
            # Σ_n w_n b_n = Σ_{n,t} w_n δ_{n,t}: grad_bias of the weighted rows
            return _as_shape(grad_bias(d), self.shape)
        # Σ_n w_n b_n = (w ⊙ δ)ᵀ U: grad_weight of the weighted rows
        return _as_shape(grad_weight(d, outer_rows(*self.flat_factors)), self.shape)

    def each(self, scale: float = 1.0, out: Tensor | None = None) -> Tensor:
        delta = self.delta if scale == 1 else self.delta * scale  # scaled before the big product
        if not self.flat_factors:
            # b_n = Σ_t δ_{n,t}: grad_bias per sample
            return grad_bias(delta)
        n = delta.shape[0]
        if out is None:  # a tensor of its own (no view of another), so that it can be written again
            out = torch.empty((n, *self.shape), dtype=delta.dtype, device=delta.device)
        # b_n = δ_nᵀ U_n: grad_weight per sample
        grad_weight(delta, outer_rows(*self.factors), out.view(n, delta.shape[-1], math.prod(self.shape[1:])))
        return out

    def _gram_is_cheaper(self) -> bool:
        """The Gram form costs ``T²(out + Σd)`` per sample, forming ``b_n`` costs ``T·out·Πd``."""
        t, out = self.rows.t, self.rows.flat.shape[-1]
        dims = [f.shape[-1] for f in self.flat_factors]
        return t * (out + sum(dims)) <= out * math.prod(dims)

    def _norm_sq(self) -> Tensor:
        if self.rows.t == 1:
            # ‖δ_n u_nᵀ‖² = ‖δ_n‖² Π_k ‖x_{k,n}‖²   (‖δ_n‖² alone for a bias)
            sq = self.rows.sq_norms()[:, 0]
            for f in self.flat_factors:
                sq = sq * _sq_norms(f)
            return sq
        if not self.flat_factors or not self._gram_is_cheaper():
            return _sq_norms(self.each().flatten(1))
        # ‖Σ_t δ_t u_tᵀ‖² = Σ_{t,s} (δ_t · δ_s) Π_k (x_{k,t} · x_{k,s})   (Gram form)
        delta = self.delta
        gram = delta.matmul(delta.mT)
        for f in self.factors:
            gram = gram * f.matmul(f.mT)
        return gram.sum((1, 2))

    def sum_sq(self) -> Tensor:
        if self.rows.t == 1:
            # Σ_n b_n ⊙ b_n = (δ ⊙ δ)ᵀ (U ⊙ U): each b_n = δ_n u_nᵀ is an outer product
            squares = tuple(f.square() for f in self.flat_factors)
            rows = Rows(self.rows.flat.square(), self.rows.n, 1)
            return DenseSamples(rows, squares, self.shape).total()
        return self.each().square().sum(0)

    @staticmethod
    def join(parts: list[DenseSamples]) -> DenseSamples:
        """One parameter's terms from several uses (a layer called twice): more rows per sample."""
        delta = torch.cat([p.delta for p in parts], 1)
        factors = tuple(torch.cat(fs, 1) for fs in zip(*(p.factors for p in parts), strict=True))
        n, t = delta.shape[:2]
        flat = tuple(f.reshape(n * t, f.shape[-1]) for f in factors)
        return DenseSamples(Rows(delta.reshape(n * t, delta.shape[-1]), n, t, owned=True), flat, parts[0].shape)


class GivenSamples(Samples):
    """Terms formed by the layer itself, ``(N, *shape)``: where they are as cheap as the gradient
    (PReLU's slopes: one number per sample and channel)."""

    def __init__(self, each: Tensor) -> None:
        self._each, self.shape, self.dtype = each, each.shape[1:], each.dtype

    def total(self, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            return self._each.sum(0)
        return torch.tensordot(weights.to(self._each.dtype), self._each, 1)

    def each(self, scale: float = 1.0, out: Tensor | None = None) -> Tensor:
        return self._each if scale == 1 else self._each * scale

    def _norm_sq(self) -> Tensor:
        return _sq_norms(self._each.flatten(1))

    def sum_sq(self) -> Tensor:
        return self._each.square().sum(0)


def _one_row_layers(samples: list[Samples]) -> list[tuple[Rows, Tensor | None, bool]] | None:
    """The layers behind ``samples`` as ``(δ, input, has bias)``, where every term is a one-row dense
    layer's (a 2-D input: the usual MLP) of one dtype, its weight's and bias's terms sharing δ;
    ``None`` otherwise."""
    layers: dict[int, tuple[Rows, Tensor | None, bool]] = {}
    dtype = samples[0].dtype
    for b in samples:
        if type(b) is not DenseSamples or len(b.flat_factors) > 1 or b.rows.t != 1 or b.dtype != dtype:
            return None
        rows, x, bias = layers.get(id(b.rows), (b.rows, None, False))
        if b.flat_factors:
            if x is not None:
                return None
            x = b.flat_factors[0]
        elif bias:
            return None
        layers[id(b.rows)] = (rows, x, bias or not b.flat_factors)
    return list(layers.values())


def _layers_norm_sq(layers: list[tuple[Rows, Tensor | None, bool]]) -> Tensor:
    """``Σ_p ‖b_n‖²`` over one-row dense layers (:func:`_one_row_layers`), for every sample.

    A layer's weight and bias share δ: ``‖δ_n x_nᵀ‖² + ‖δ_n‖² = ‖δ_n‖² (‖x_n‖² + 1)``. The row norms
    of all layers go into two ``(L, N)`` buffers, so that combining them costs five ops whatever
    the depth (each op run between a backward's large products costs several times its own time).
    """
    delta = layers[0][0].flat
    d = delta.new_empty(len(layers), delta.shape[0])
    u = torch.empty_like(d)
    for i, (rows, x, _) in enumerate(layers):
        torch.linalg.vector_norm(rows.flat, dim=-1, out=d[i])  # ‖δ_n‖
        if x is None:
            u[i].zero_()
        else:
            torch.linalg.vector_norm(x, dim=-1, out=u[i])  # ‖x_n‖
    bias = [has_bias for _, _, has_bias in layers]
    u.square_()
    if all(bias):
        u.add_(1.0)
    elif any(bias):
        u.add_(torch.tensor(bias, dtype=u.dtype, device=u.device)[:, None])
    # Σ_layers ‖δ_n‖² (‖x_n‖² + [bias])
    return u.mul_(d.square_()).sum(0)


def _combine(parts: list[Samples]) -> Samples:
    """One parameter's terms from all the nodes that used it."""
    if len(parts) == 1:
        return parts[0]
    dense = [p for p in parts if isinstance(p, DenseSamples)]
    if len(dense) == len(parts) and len({len(p.flat_factors) for p in dense}) == 1:
        return DenseSamples.join(dense)
    return GivenSamples(sum(p.each() for p in parts))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The quantities (one small class each), set as attributes of each parameter.
# ---------------------------------------------------------------------------------------------


class Quantity:
    """A per-sample quantity; :class:`per_sample` sets ``p.<name>`` on every trainable parameter."""

    name: ClassVar[str]

    def __call__(self, b: Samples, scale: float, n: int, p: nn.Parameter) -> Tensor:
        """``p``'s quantity from its terms ``b`` (``scale``: ``s``; ``n``: the batch size)."""
        raise NotImplementedError


class GradSample(Quantity):
    """``p.grad_sample[n] = s · b_n``: the gradient of sample ``n``'s own loss term, ``(N, *p.shape)``
    (Opacus's ``grad_sample``: ``s = N`` undoes a mean's ``1/N``).

    ``N × |p|`` numbers, the one quantity that is as large as its name says: the memory of the
    previous ``p.grad_sample`` is written again where nothing but ``p`` still holds it (no tensor, view
    or array of it anywhere), which spares the page faults of a fresh allocation (most of the time
    of a large one)."""

    name = "grad_sample"

    def __call__(self, b: Samples, scale: float, n: int, p: nn.Parameter) -> Tensor:
        previous = _unshared(p, self.name)
        reuse = previous is not None and previous.shape == (n, *b.shape) and previous.dtype == b.dtype
        return b.each(scale, previous if reuse else None)


def _unshared(p: nn.Parameter, name: str) -> Tensor | None:
    """``p.<name>``, where nothing but ``p`` holds it or its memory (then writing it again is invisible)."""
    old = p.__dict__.get(name)
    if not isinstance(old, Tensor) or not old.is_contiguous():
        return None
    # references: p's attribute, ``old`` here and getrefcount's argument; storage: ``old`` alone
    if sys.getrefcount(old) == 3 and storage_use_count(old) == 1:
        return old
    return None


class BatchL2(Quantity):
    """``p.batch_l2[n] = ‖b_n‖²``, ``(N,)`` (BackPACK's ``BatchL2Grad``: a mean's ``1/N`` stays in ``b_n``)."""

    name = "batch_l2"

    def __call__(self, b: Samples, scale: float, n: int, p: nn.Parameter) -> Tensor:
        return b.norm_sq()


class SumGradSquared(Quantity):
    """``p.sum_grad_squared = Σ_n b_n ⊙ b_n``, of ``p``'s shape (BackPACK's ``SumGradSquared``)."""

    name = "sum_grad_squared"

    def __call__(self, b: Samples, scale: float, n: int, p: nn.Parameter) -> Tensor:
        return b.sum_sq()


class Variance(Quantity):
    """``p.variance = (1/N) Σ_n b_n ⊙ b_n − ((1/N) Σ_n b_n)²``, of ``p``'s shape (BackPACK's ``Variance``)."""

    name = "variance"

    def __call__(self, b: Samples, scale: float, n: int, p: nn.Parameter) -> Tensor:
        return b.sum_sq() / n - (b.total() / n).square()


QUANTITIES: dict[str, Quantity] = {q.name: q() for q in (GradSample, BatchL2, SumGradSquared, Variance)}
"""The quantities :class:`per_sample` knows, by attribute name."""


# ---------------------------------------------------------------------------------------------
# The contexts.
# ---------------------------------------------------------------------------------------------


def _layer_types() -> tuple[type[nn.Module], ...]:
    from manualgrad import nn as mnn

    return (mnn.Linear, mnn.Bilinear, mnn.PReLU)


def _trainable(fname: str, model: nn.Module) -> list[nn.Parameter]:
    """``model``'s trainable parameters; a clear error where one is outside manualgrad's layers."""
    layers = _layer_types()
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for p in module._parameters.values():
            if p is None or not p.requires_grad or id(p) in seen:
                continue
            if not isinstance(module, layers):
                _raise_outside(fname, model, layers)
            seen.add(id(p))
            params.append(p)
    return params


def _raise_outside(fname: str, model: nn.Module, layers: tuple[type[nn.Module], ...]) -> None:
    outside: list[str] = []
    for mname, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if own and not isinstance(module, layers):
            where = f"{mname} ({type(module).__name__})" if mname else f"the model itself ({type(module).__name__})"
            outside.append(f"{where}: {', '.join(own)}")
    kinds = ", ".join(f"manualgrad.nn.{t.__name__}" for t in layers)
    raise ValueError(
        f"{fname}(): expected every trainable parameter to be in a manualgrad layer ({kinds}), but got "
        f"trainable parameters in {'; '.join(outside)}; their per-sample terms are unknown: use manualgrad "
        "layers or freeze them (requires_grad_(False))"
    )


class _Context:
    """What :class:`per_sample` and :class:`clip_per_sample` share: the records kept during the
    backward (the ``TAP`` interface of manualgrad's layers), the checks, and ``p.grad`` formed at the
    end, all at once (an error leaves every ``p.grad`` as it was before the context)."""

    fname: ClassVar[str]
    _param_norms = False  # each parameter's ‖b_n‖² is asked for anyway: the norms add those up

    def __init__(self, model: nn.Module, loss_reduction: str) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.fname}(): expected model to be a torch.nn.Module, but got {type(model).__name__}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(
                f"{self.fname}(): expected loss_reduction to be 'mean' or 'sum', but got {loss_reduction!r}"
            )
        self.model, self.loss_reduction = model, loss_reduction
        self.norms: Tensor | None = None
        """``[N]``: each sample's gradient norm over all the model's trainable parameters, unclipped
        (set when the context closes)."""
        self._params: list[nn.Parameter] = []
        self._ids: set[int] = set()
        self._records: dict[int, list[Samples]] = {}
        self._stash: dict[int, Tensor] = {}
        self._n: int | None = None
        self._task: int | None = None

    # -- entering and leaving ----------------------------------------------------------------

    def __enter__(self) -> Any:
        if TAP.active is not None:
            raise RuntimeError(
                f"{self.fname}(): expected no other per-sample context to be open, but {TAP.active.fname}() is "
                "(they do not nest)"
            )
        self._params = _trainable(self.fname, self.model)
        self._ids = {id(p) for p in self._params}
        self._records, self._n, self._task = {}, None, None
        stash = self._stash = {}
        for p in self._params:
            g = p.grad
            if g is not None:  # kept aside: whatever reaches p.grad now did not come through a manualgrad layer
                stash[id(p)] = g
                p.grad = None
        TAP.active = self
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        TAP.active = None
        records, self._records = self._records, {}
        try:
            if exc_type is None:
                self._finish(records)
                return
        except BaseException:
            self._restore()
            raise
        self._restore()

    def _restore(self) -> None:
        for p in self._params:
            p.grad = self._stash.get(id(p))

    @torch.no_grad()
    def _finish(self, records: dict[int, list[Samples]]) -> None:
        if any(p.grad is not None for p in self._params):
            names = {id(p): n for n, p in self.model.named_parameters()}
            reached = ", ".join(names[id(p)] for p in self._params if p.grad is not None)
            raise RuntimeError(
                f"{self.fname}(): expected the gradients of the model's parameters to come from manualgrad's "
                f"layers only, but {reached} also received gradient from other operations (a torch op "
                "on the parameter, or a model under torch.compile); their per-sample terms are unknown"
            )
        n = self._n or 0
        samples = {key: _combine(parts) for key, parts in records.items()}
        scale = float(n) if self.loss_reduction == "mean" else 1.0
        if samples:  # ‖g_n‖ = s ‖b_n‖, b_n over all parameters
            self.norms = self._norm_sq(list(samples.values())).sqrt_().mul_(scale)
        else:
            self.norms = torch.zeros(n)
        weights = self._weights(scale)
        grads = {key: b.total(weights) for key, b in samples.items()}
        extra = self._quantities(samples, scale, n)
        for p in self._params:  # all computed: now write, all at once
            key = id(p)
            g, old = grads.get(key), self._stash.get(key)
            if g is not None:
                g = in_dtype(g, p.dtype)
                p.grad = g if old is None else old.add_(g)
            elif old is not None:
                p.grad = old
            for name, value in extra.get(key, {}).items():
                setattr(p, name, value)

    def _norm_sq(self, samples: list[Samples]) -> Tensor:
        """``Σ_p ‖b_n‖²`` over all the parameters' terms ``samples``: ``(N,)``."""
        layers = None if self._param_norms else _one_row_layers(samples)
        if layers is None:
            return torch.stack([b.norm_sq() for b in samples]).sum(0)
        return _layers_norm_sq(layers)

    def _weights(self, scale: float) -> Tensor | None:
        """The per-sample weights ``w_n`` of ``p.grad = Σ_n w_n b_n``."""
        return None

    def _quantities(self, samples: dict[int, Samples], scale: float, n: int) -> dict[int, dict[str, Tensor | None]]:
        return {}

    # -- the TAP interface: called from the backward of manualgrad's layers -----------------

    def _batch(self, lead: torch.Size) -> tuple[int, int]:
        """``(N, T)`` of a layer input with leading dims ``lead``, checked against the other layers'."""
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{self.fname}(): expected a first-order backward, but got one that records a graph "
                "(create_graph=True); per-sample terms are first-order only"
            )
        task = graph_task_id()
        if self._task is None:
            self._task = task
        elif task != self._task:
            raise RuntimeError(
                f"{self.fname}(): expected one backward pass inside the context, but a second one started; "
                "open a new context for each backward"
            )
        if len(lead) == 0:
            raise RuntimeError(
                f"{self.fname}(): expected every layer input to have a batch dimension (dim 0), but got an input "
                "with its feature dim only (one unbatched sample, shape [features])"
            )
        n, t = lead[0], math.prod(lead[1:])
        if self._n is None:
            self._n = n
        elif n != self._n:
            raise RuntimeError(
                f"{self.fname}(): expected every layer to see the same batch dimension (dim 0: one sample per "
                f"index), but got layer inputs with {self._n} and {n} in dim 0"
            )
        return n, t

    def _param(self, node: Any, edges: tuple[tuple[Any, int], ...], at: int) -> nn.Parameter | None:
        """The parameter behind edge ``at`` of backward node ``node`` (``None``: it needs no gradient)."""
        fn = edges[at][0]
        if fn is None:
            return None
        p = getattr(fn, "variable", None)
        if p is None or id(p) not in self._ids:
            what = "a tensor computed from others" if p is None else f"a leaf of shape {shape_str(p)} outside the model"
            raise RuntimeError(
                f"{self.fname}(): expected the parameters of manualgrad's layers to be trainable parameters of "
                f"the model, but a {type(node).__name__.removesuffix('Backward')} layer got {what}"
            )
        return p

    def _add(self, p: nn.Parameter, b: Samples) -> None:
        self._records.setdefault(id(p), []).append(b)

    def dense(
        self,
        node: Any,
        w_at: int,
        b_at: int | None,
        delta: Tensor,
        inputs: tuple[Tensor, ...],
        lead: torch.Size,
        owned: bool = False,
    ) -> None:
        """A dense layer's terms: δ rows ``(R, out)``, its input rows ``(R, d)`` (one per factor), and the
        leading dims of its input (``R = Πlead``; ``lead[0]`` is the batch). ``w_at`` and ``b_at`` are the
        weight's and bias's edges among the node's ``next_functions`` (``b_at`` ``None``: no bias);
        ``owned``: δ is the caller's own temporary (see :class:`Rows`)."""
        n, t = self._batch(lead)
        edges = node.next_functions
        weight = self._param(node, edges, w_at)
        bias = None if b_at is None else self._param(node, edges, b_at)
        rows = Rows(delta, n, t, owned and delta.is_contiguous())
        if weight is not None:
            self._add(weight, DenseSamples(rows, inputs, weight.shape))
        if bias is not None:
            self._add(bias, DenseSamples(rows, (), bias.shape))

    def given(self, node: Any, at: int, each: Tensor, lead: torch.Size) -> None:
        """A layer's terms formed by the layer itself: ``each`` is ``(N, *p.shape)``."""
        self._batch(lead)
        p = self._param(node, node.next_functions, at)
        if p is not None:
            self._add(p, GivenSamples(each))

    def reject_loss(self, fname: str, why: str) -> None:
        """Raised from a loss's backward whose reduction is not a plain per-sample sum or mean."""
        raise RuntimeError(
            f"{self.fname}(): expected a loss that is a plain sum or mean of per-sample terms, but {fname}() is {why}"
        )


class per_sample(_Context):
    r"""Per-sample gradients, norms and statistics of the backward run inside it.

    ``with per_sample(model, *quantities) as ps: loss.backward()`` leaves ``p.grad`` as without the
    context, sets each asked quantity on every trainable parameter ``p`` that received gradient,
    and ``ps.norms``: each sample's gradient norm ``‖g_n‖`` over all the model's trainable parameters.

    Quantities (:data:`QUANTITIES`), for ``b_n`` the term of sample ``n`` in ``p.grad`` and ``g_n = s·b_n``
    (``s = N`` for ``loss_reduction="mean"``, 1 for ``"sum"``):

    * ``"grad_sample"``: ``p.grad_sample = [g_1, …, g_N]``, ``(N, *p.shape)``, as Opacus's
      ``GradSampleModule(model, loss_reduction=...)`` sets it;
    * ``"batch_l2"``: ``p.batch_l2[n] = ‖b_n‖²``; ``"sum_grad_squared"``: ``Σ_n b_n ⊙ b_n``;
      ``"variance"``: ``(1/N) Σ_n b_n ⊙ b_n − ((1/N) Σ_n b_n)²`` (BackPACK's ``BatchL2Grad``,
      ``SumGradSquared`` and ``Variance``).

    The norms are formed without the per-sample gradients: ``‖b_n‖ = ‖δ_n‖‖x_n‖`` per dense layer.

    Args:
        model: the module whose trainable parameters are all in manualgrad layers.
        *quantities: names from :data:`QUANTITIES` (none: only ``.norms``).
        loss_reduction: ``"mean"`` (default) or ``"sum"``: how the loss reduces its per-sample terms.

    Raises before any gradient is touched for a trainable parameter outside manualgrad's layers
    and for nested contexts; during the backward for a double backward, a second backward, layers
    that disagree on the batch dimension, or a class-weighted mean loss of manualgrad's, leaving
    every ``p.grad`` as it was.

    Example:
        >>> import torch, manualgrad, manualgrad.nn as mnn
        >>> net = mnn.MLP(4, [8], 3)
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> with manualgrad.per_sample(net, "grad_sample") as ps:
        ...     mnn.CrossEntropyLoss()(net(x), y).backward()
        >>> net[0].weight.grad_sample.shape, ps.norms.shape
        (torch.Size([5, 8, 4]), torch.Size([5]))
        >>> torch.allclose(net[0].weight.grad_sample.mean(0), net[0].weight.grad)
        True
    """

    fname = "per_sample"

    def __init__(self, model: nn.Module, *quantities: str, loss_reduction: str = "mean") -> None:
        super().__init__(model, loss_reduction)
        for q in quantities:
            if q not in QUANTITIES:
                raise ValueError(f"per_sample(): expected quantities from {sorted(QUANTITIES)}, but got {q!r}")
        self.quantities = tuple(dict.fromkeys(quantities))
        self._param_norms = BatchL2.name in self.quantities

    def _quantities(self, samples: dict[int, Samples], scale: float, n: int) -> dict[int, dict[str, Tensor | None]]:
        out: dict[int, dict[str, Tensor | None]] = {}
        for p in self._params:
            b = samples.get(id(p))
            out[id(p)] = {name: None if b is None else QUANTITIES[name](b, scale, n, p) for name in self.quantities}
        return out


class clip_per_sample(_Context):
    r"""Per-sample gradient clipping in one backward pass: ``p.grad = Σ_n min(1, C/‖g_n‖) g_n``.

    ``with clip_per_sample(model, max_grad_norm) as clip: loss.backward()`` leaves in every trainable
    ``p.grad`` the sum of the clipped per-sample gradients (flat clipping: ``‖g_n‖`` over all the
    model's trainable parameters, ``g_n`` the gradient of sample ``n``'s own loss term), and in
    ``clip.norms`` the unclipped ``‖g_n‖``. That sum is what Opacus's
    ``DPOptimizerFastGradientClipping`` takes before it adds noise and scales.

    The backward keeps each layer's δ; the norms come from all layers' factors
    (``‖δ_n‖‖x_n‖``), the clip factors ``c_n = min(1, C / (‖g_n‖ + 10⁻⁶))`` (Opacus's) from the norms, and
    each weight's gradient is one product ``(s c ⊙ δ)ᵀ X``: no per-sample gradient is ever formed.

    Args:
        model: the module whose trainable parameters are all in manualgrad layers.
        max_grad_norm: the clipping bound ``C > 0``.
        loss_reduction: ``"mean"`` (default) or ``"sum"``: how the loss reduces its per-sample terms.

    Example:
        >>> import torch, manualgrad, manualgrad.nn as mnn
        >>> net = mnn.MLP(4, [8], 3)
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> with manualgrad.clip_per_sample(net, max_grad_norm=0.1) as clip:
        ...     mnn.CrossEntropyLoss()(net(x), y).backward()
        >>> total = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        >>> bool(total <= 5 * 0.1 + 1e-6)  # five samples, each at most 0.1
        True
    """

    fname = "clip_per_sample"

    def __init__(self, model: nn.Module, max_grad_norm: float, loss_reduction: str = "mean") -> None:
        super().__init__(model, loss_reduction)
        if (
            isinstance(max_grad_norm, bool)
            or not isinstance(max_grad_norm, (int, float))
            or not math.isfinite(max_grad_norm)
            or max_grad_norm <= 0
        ):
            raise ValueError(
                f"clip_per_sample(): expected max_grad_norm to be a positive finite number, but got {max_grad_norm!r}"
            )
        self.max_grad_norm = float(max_grad_norm)
        self.clip_factors: Tensor | None = None
        """``[N]``: the factors ``c_n`` the per-sample gradients were scaled by (set when the context closes)."""

    def _weights(self, scale: float) -> Tensor:
        # c_n = min(1, C / (‖g_n‖ + 1e-6)), then p.grad = Σ_n c_n g_n = Σ_n (s c_n) b_n
        assert self.norms is not None
        self.clip_factors = (self.max_grad_norm / (self.norms + 1e-6)).clamp_(max=1.0)
        return self.clip_factors * scale
