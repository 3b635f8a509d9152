r"""The registry of elementwise activation formulas.

Every elementwise activation of manualgrad is one :class:`Activation` entry in :data:`ACTIVATIONS`.
An entry holds the forward (torch's own forward kernel), the hand-derived backward

.. math::
    \frac{\partial C}{\partial z} = \frac{\partial C}{\partial a} \odot \sigma'(z)

(``grad_input = grad_output * σ'``, the spec's "derivatives for activation layers"), and what the
backward needs saved: the input ``z`` or, where :math:`\sigma'` is a function of the output, the
output ``a`` (a ReLU's or a sigmoid's output is also the next Linear's input, so saving it costs
nothing).

From each entry :mod:`manualgrad.functional` builds the function (``relu(input, inplace=False)``),
:mod:`manualgrad.nn` builds the module (``ReLU(inplace=False)``) and the test-suite builds its
gradcheck, parity, state-dict, compile and autocast cases. Adding an activation is adding an entry.

The ``grad`` functions also serve forward mode: an elementwise Jacobian is diagonal, so the
tangent of the output is ``grad(tangent_of_input, saved, *params)``.

:data:`manualgrad.fusion.FUSION` compiles these same formulas (and, inside a dense stack, the
forward too) into fused CPU kernels where that is safe.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from manualgrad.fusion import FUSION, plain_first_order

__all__ = ["ACTIVATIONS", "FUSION", "Activation", "Param"]  # FUSION: re-exported from manualgrad.fusion


@dataclass(frozen=True)
class Param:
    """One constructor argument of an activation (torch.nn's name, default and meaning)."""

    name: str
    default: Any = None
    doc: str = ""
    required: bool = False
    annotation: Any = float


@dataclass(frozen=True, eq=False)
class Activation:
    """One elementwise activation: its torch.nn identity, forward, derivative and what to save.

    Args:
        name: the functional name (``torch.nn.functional.<name>``).
        module: the torch.nn class name.
        formula: the forward formula in LaTeX (docstrings).
        forward: ``forward(z, *params) -> a``, out of place.
        grad: ``grad(grad_output, saved, *params) -> grad_input``: ``dC/dz = dC/da ⊙ σ'``.
        saves: ``"input"`` (``saved`` is ``z``) or ``"output"`` (``saved`` is ``a``).
        params: constructor arguments, in torch.nn's order (``inplace`` excluded).
        inplace: whether torch.nn's module and function take ``inplace``.
        forward_: in-place forward ``forward_(z, *params) -> z`` (``saves="output"`` only).
        check: validates/normalises the params; raises in torch's words.
        repr_: ``extra_repr`` of the module from its params (default ``k=v, ...``).
        kinks: inputs where σ' jumps or torch picks a one-sided value; tests probe them.
        sample: a range ``(lo, hi)`` for random test inputs.
    """

    name: str
    module: str
    formula: str
    forward: Callable[..., Tensor]
    grad: Callable[..., Tensor]
    saves: Literal["input", "output"]
    params: tuple[Param, ...] = ()
    inplace: bool = False
    forward_: Callable[..., Tensor] | None = None
    check: Callable[..., tuple[Any, ...]] | None = None
    repr_: Callable[..., str] | None = None
    kinks: tuple[float, ...] = ()
    sample: tuple[float, float] = (-4.0, 4.0)
    extra_params: tuple[Param, ...] = field(default=())  # deprecated keyword aliases (Hardtanh)
    variants: tuple[tuple[Any, ...], ...] = ()  # non-default params the tests also cover
    grad_: Callable[..., Tensor] | None = None  # ``grad`` that may overwrite ``grad_output`` (speed)
    grad_plain: Callable[..., Tensor] | None = None  # ``grad`` for plain first order only (speed)

    def __repr__(self) -> str:  # shows up in compile guards and test ids
        return f"Activation({self.name})"

    @cached_property
    def defaults(self) -> tuple[Any, ...]:
        return tuple(p.default for p in self.params)

    @property
    def examples(self) -> tuple[tuple[Any, ...], ...]:
        """Param sets to test: the defaults (unless a param is required) and the variants."""
        required = any(p.required for p in self.params)
        return self.variants if required else (self.defaults, *self.variants)

    def normalise(self, *params: Any) -> tuple[Any, ...]:
        return self.check(*params) if self.check is not None else params

    def apply_(self, z: Tensor, *params: Any) -> Tensor:
        """In-place forward on a tensor nobody else holds (used by the fused dense stack)."""
        if self.forward_ is not None:
            return self.forward_(z, *params)
        return self.forward(z, *params)

    def backward(self, g: Tensor, saved: Tensor, *params: Any, overwrite: bool = False) -> Tensor:
        """``dC/dz = dC/da ⊙ σ'``, the way that is fastest here; every way computes ``grad``'s formula.

        * ``overwrite``: ``g`` is the backward's own temporary, so the result may be written into it.
        * a first-order backward on CPU, from ``FUSION.min_numel`` elements on (for the one- or
          two-kernel formulas that have ``grad_``: ``FUSION.min_numel_simple``, by default never),
          runs ``grad`` compiled into one fused
          loop (:data:`FUSION`) once that shape has paid for its compile: the formula then reads
          and writes memory once, like torch's hand-written kernels, instead of once per step
          (GELU's formula is a dozen steps).
        * otherwise, op by op: ``grad_`` (when ``overwrite``), else ``grad_plain`` (plain first
          order: no grad mode, no functorch transform; fewer passes and allocations, with ``out=``
          and in-place ops that a graph or a transform could not take), else ``grad`` itself (also
          for double backward, vmap, forward AD and inside ``torch.compile``).
        """
        if not plain_first_order(g, saved):  # a graph, a transform or TorchDynamo: the formula itself
            return self.grad(g, saved, *params)
        eager = self.grad_ if overwrite and self.grad_ is not None else (self.grad_plain or self.grad)
        min_numel = FUSION.min_numel if self.grad_ is None else FUSION.min_numel_simple
        if min_numel is not None and g.numel() >= min_numel and g.shape == saved.shape and g.dtype == saved.dtype:
            calls = FUSION.sample()
            if calls and FUSION.fits(g, saved):
                key, formula = (self.name, params, overwrite), self._formula(params, overwrite)
                # what a kernel saves: half of a one- or two-kernel formula, most of a dozen-step one
                gain = 0.5 if self.grad_ is not None else 0.8
                return FUSION.run(key, formula, g, saved, gain=gain, eager=_bind(eager, params), calls=calls)[0]
        return eager(g, saved, *params)

    def _formula(self, params: tuple[Any, ...], into: bool) -> Callable[[Tensor, Tensor], Tensor]:
        """``grad`` with fixed params, as :data:`FUSION` compiles it (``into``: written into ``g``)."""

        def formula(g: Tensor, saved: Tensor) -> Tensor:
            out = self.grad(g, saved, *params)
            return g.copy_(out) if into else out

        return formula


def _bind(grad: Callable[..., Tensor], params: tuple[Any, ...]) -> Callable[[Tensor, Tensor], Tensor]:
    """``grad`` with its activation params fixed."""
    return lambda g, saved: grad(g, saved, *params)


# ---------------------------------------------------------------------------------------------
# Derivatives. Each docstring is the formula of the line below it. ``g`` is dC/da, the result dC/dz.
# ---------------------------------------------------------------------------------------------


def _relu_grad(g: Tensor, a: Tensor) -> Tensor:
    """dC/dz = dC/da ⊙ 1[¬(a ≤ 0)] = dC/da ⊙ ⌈min(a, 1)⌉ with a NaN read as 1 (a ≥ 0 or NaN): 0 at the
    kink z = 0, and a NaN passes dC/da, as torch's threshold_backward (float kernels: a bool mask is
    many times slower here)."""
    return g * a.clamp(max=1.0).ceil_().nan_to_num_(nan=1.0)


def _relu_grad_plain(g: Tensor, a: Tensor) -> Tensor:
    """``_relu_grad``'s mask in one pass, written as floats: 1[a ≠ 0] = 1[¬(a ≤ 0)] (a ≥ 0 or NaN).
    Two passes and one buffer instead of four and two (plain first order: ``out=`` and in place)."""
    return torch.ne(a, 0.0, out=torch.empty_like(g)).mul_(g)


def _bounded_grad(g: Tensor, a: Tensor, lo: float, hi: float) -> Tensor:
    """dC/dz = dC/da ⊙ 1[lo < a < hi] (hardtanh, relu6: 0 on both kinks and at a NaN, as torch)."""
    return torch.where((a > lo) & (a < hi), g, 0.0)


def _leaky_relu_grad(g: Tensor, z: Tensor, slope: float) -> Tensor:
    """dC/dz = dC/da ⊙ (1 if z > 0 else negative_slope)."""
    return torch.where(z > 0, g, g * slope)


def _elu_like_grad(g: Tensor, z: Tensor, alpha: float, scale: float, input_scale: float) -> Tensor:
    """ELU(z) = scale·(z if z > 0 else α(e^{z·s} − 1));  dC/dz = dC/da ⊙ (scale if z > 0 else scale·α·s·e^{z·s})."""
    return torch.where(z > 0, g * scale, g * (scale * alpha * input_scale) * torch.exp(z * input_scale))


def _elu_grad(g: Tensor, z: Tensor, alpha: float) -> Tensor:
    return _elu_like_grad(g, z, alpha, 1.0, 1.0)


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _selu_grad(g: Tensor, z: Tensor) -> Tensor:
    return _elu_like_grad(g, z, _SELU_ALPHA, _SELU_SCALE, 1.0)


def _celu_grad(g: Tensor, z: Tensor, alpha: float) -> Tensor:
    return _elu_like_grad(g, z, alpha, 1.0, 1.0 / alpha)


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_erf_grad(g: Tensor, z: Tensor) -> Tensor:
    """GELU(z) = z·Φ(z):  σ'(z) = Φ(z) + z·φ(z),  Φ(z) = ½(1 + erf(z/√2)),  φ(z) = e^{−z²/2}/√(2π)."""
    return g * (0.5 * (1.0 + torch.erf(z * _INV_SQRT_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI)


def _gelu_tanh_grad(g: Tensor, z: Tensor) -> Tensor:
    """u = √(2/π)(z + 0.044715 z³), t = tanh(u):  σ'(z) = ½(1 + t) + ½·z·(1 − t²)·√(2/π)(1 + 3·0.044715 z²)."""
    z2 = z * z
    t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z2 * z))
    return g * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z2))


def _gelu_grad(g: Tensor, z: Tensor, approximate: str) -> Tensor:
    return _gelu_tanh_grad(g, z) if approximate == "tanh" else _gelu_erf_grad(g, z)


def _gelu_grad_plain(g: Tensor, z: Tensor, approximate: str) -> Tensor:
    """``_gelu_grad``'s arithmetic in two new buffers instead of eleven (plain first order: in place on
    them): z·φ(z) and Φ(z) each in their own, then Φ + z·φ and the product with g in place."""
    if approximate == "tanh":
        return _gelu_tanh_grad(g, z)
    z_phi = torch.mul(z, z).mul_(-0.5).exp_().mul_(z).mul_(_INV_SQRT_2PI)  # z·φ(z)
    cdf = torch.mul(z, _INV_SQRT_2).erf_().add_(1.0).mul_(0.5)  # Φ(z)
    return cdf.add_(z_phi).mul_(g)


def _silu_grad(g: Tensor, z: Tensor) -> Tensor:
    """SiLU(z) = z·s(z), s the sigmoid:  σ'(z) = s(z)·(1 + z·(1 − s(z)))."""
    s = torch.sigmoid(z)
    return g * s * (1.0 + z * (1.0 - s))


def _mish_grad(g: Tensor, z: Tensor) -> Tensor:
    """Mish(z) = z·tanh(softplus(z)), t = tanh(softplus(z)):  σ'(z) = t + z·s(z)·(1 − t²)."""
    t = torch.tanh(F.softplus(z))
    return g * (t + z * torch.sigmoid(z) * (1.0 - t * t))


def _sigmoid_grad(g: Tensor, a: Tensor) -> Tensor:
    """σ'(z) = s(z)(1 − s(z)) = a(1 − a):  dC/dz = (dC/da ⊙ a) − (dC/da ⊙ a) ⊙ a."""
    ga = g * a
    return torch.addcmul(ga, ga, a, value=-1.0)


def _sigmoid_grad_(g: Tensor, a: Tensor) -> Tensor:
    """In place on g, the same arithmetic as ``_sigmoid_grad``."""
    return g.mul_(a).addcmul_(g, a, value=-1.0)


def _sigmoid_grad_plain(g: Tensor, a: Tensor) -> Tensor:
    """``_sigmoid_grad``'s arithmetic in one new buffer (plain first order: in place on it)."""
    ga = g * a
    return ga.addcmul_(ga, a, value=-1.0)


def _logsigmoid_grad(g: Tensor, z: Tensor) -> Tensor:
    """LogSigmoid(z) = −softplus(−z):  σ'(z) = 1 − s(z) = s(−z)."""
    return g * torch.sigmoid(-z)


def _tanh_grad(g: Tensor, a: Tensor) -> Tensor:
    """σ'(z) = 1 − tanh²(z) = 1 − a²:  dC/dz = dC/da − (dC/da ⊙ a) ⊙ a."""
    return torch.addcmul(g, g * a, a, value=-1.0)


def _tanh_grad_(g: Tensor, a: Tensor) -> Tensor:
    """In place on g, the same arithmetic as ``_tanh_grad``."""
    return g.addcmul_(g * a, a, value=-1.0)


def _tanh_grad_plain(g: Tensor, a: Tensor) -> Tensor:
    """``_tanh_grad``'s arithmetic in one new buffer (plain first order: ``out=``)."""
    ga = g * a
    return torch.addcmul(g, ga, a, value=-1.0, out=ga)


def _hardsigmoid_grad(g: Tensor, a: Tensor) -> Tensor:
    """Hardsigmoid(z) = relu6(z + 3)/6:  σ'(z) = 1/6 on −3 < z < 3 ⇔ 0 < a < 1, else 0."""
    return torch.where((a > 0) & (a < 1), g * (1.0 / 6.0), 0.0)


def _hardswish_grad(g: Tensor, z: Tensor) -> Tensor:
    """Hardswish(z) = z·relu6(z + 3)/6:  σ'(z) = 0 if z ≤ −3, z/3 + ½ if −3 < z < 3, 1 if z ≥ 3.

    The kinks are torch's from 2.7 on; torch 2.6 and earlier give −0.5 at −3 and 1.5 at 3.
    """
    inner = torch.where(z >= 3.0, g, g * (z / 3.0 + 0.5))  # a NaN z takes the middle piece: NaN, as torch
    return torch.where(z <= -3.0, 0.0, inner)


def _softplus_grad(g: Tensor, z: Tensor, beta: float, threshold: float) -> Tensor:
    """Softplus(z) = log(1 + e^{βz})/β, linear where βz > threshold:  σ'(z) = s(βz) there 1."""
    bz = z * beta
    return torch.where(bz > threshold, g, g * torch.sigmoid(bz))


def _softsign_grad(g: Tensor, z: Tensor) -> Tensor:
    """Softsign(z) = z/(1 + |z|):  σ'(z) = 1/(1 + |z|)²."""
    d = 1.0 + z.abs()
    return g / (d * d)


def _tanhshrink_grad(g: Tensor, z: Tensor) -> Tensor:
    """Tanhshrink(z) = z − tanh(z):  σ'(z) = tanh²(z)."""
    t = torch.tanh(z)
    return g * (t * t)


def _threshold_grad(g: Tensor, z: Tensor, threshold: float, value: float) -> Tensor:
    """Threshold(z) = z if z > threshold else value:  σ'(z) = 1[¬(z ≤ threshold)] (a NaN passes, as torch)."""
    return torch.where(z <= threshold, 0.0, g)


def _shrink_grad(g: Tensor, z: Tensor, lambd: float) -> Tensor:
    """Hardshrink / Softshrink:  σ'(z) = 1[|z| > λ] (0 on the kinks ±λ and at a NaN, as torch)."""
    return torch.where((z < -lambd) | (z > lambd), g, 0.0)


# ---------------------------------------------------------------------------------------------
# Parameter checks, in torch's words.
# ---------------------------------------------------------------------------------------------


def _check_hardtanh(
    min_val: float, max_val: float, min_value: float | None = None, max_value: float | None = None
) -> tuple[float, float]:
    if min_value is not None:
        warnings.warn("keyword argument `min_value` is deprecated and renamed to `min_val`", stacklevel=4)
        min_val = min_value
    if max_value is not None:
        warnings.warn("keyword argument `max_value` is deprecated and renamed to `max_val`", stacklevel=4)
        max_val = max_value
    if not max_val > min_val:
        raise ValueError(f"hardtanh: expected max_val > min_val, but got min_val={min_val} and max_val={max_val}")
    return min_val, max_val


def _check_gelu(approximate: str) -> tuple[str]:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: expected approximate to be 'none' or 'tanh', but got approximate={approximate!r}")
    return (approximate,)


def _check_celu(alpha: float) -> tuple[float]:
    if alpha == 0:
        raise ValueError("celu: expected alpha to be non-zero (the input is divided by it), but got alpha=0")
    return (alpha,)


def _check_softplus(beta: float, threshold: float) -> tuple[float, float]:
    if beta == 0:
        raise ValueError("softplus: expected beta to be non-zero (the output is divided by it), but got beta=0")
    return beta, threshold


def _check_softshrink(lambd: float) -> tuple[float]:
    if not lambd >= 0:
        raise ValueError(f"softshrink: expected lambd to be non-negative, but got lambd={lambd}")
    return (lambd,)


_ALPHA = Param("alpha", 1.0, r"the :math:`\alpha` value. Default: 1.0")
_LAMBD = Param("lambd", 0.5, r"the :math:`\lambda` value. Default: 0.5")


def _entries() -> list[Activation]:
    return [
        Activation(
            "relu",
            "ReLU",
            r"\text{ReLU}(x) = \max(0, x)",
            forward=torch.relu,
            forward_=torch.relu_,
            grad=_relu_grad,
            grad_=_relu_grad_plain,  # the mask needs its own buffer: writing into g saves nothing
            grad_plain=_relu_grad_plain,
            saves="output",
            inplace=True,
            kinks=(0.0,),
        ),
        Activation(
            "relu6",
            "ReLU6",
            r"\text{ReLU6}(x) = \min(\max(0, x), 6)",
            forward=lambda z: F.hardtanh(z, 0.0, 6.0),
            forward_=lambda z: F.hardtanh_(z, 0.0, 6.0),
            grad=lambda g, a: _bounded_grad(g, a, 0.0, 6.0),
            saves="output",
            inplace=True,
            kinks=(0.0, 6.0),
            sample=(-3.0, 9.0),
        ),
        Activation(
            "leaky_relu",
            "LeakyReLU",
            r"\text{LeakyReLU}(x) = \max(0, x) + \text{negative\_slope} \cdot \min(0, x)",
            forward=F.leaky_relu,
            grad=_leaky_relu_grad,
            saves="input",
            inplace=True,
            params=(Param("negative_slope", 0.01, "controls the angle of the negative slope. Default: 1e-2"),),
            variants=((0.2,), (-0.3,)),
            kinks=(0.0,),
        ),
        Activation(
            "elu",
            "ELU",
            r"\text{ELU}(x) = x \text{ if } x > 0 \text{ else } \alpha (e^x - 1)",
            forward=F.elu,
            grad=_elu_grad,
            saves="input",
            inplace=True,
            params=(_ALPHA,),
            kinks=(0.0,),
            variants=((0.5,),),
        ),
        Activation(
            "selu",
            "SELU",
            r"\text{SELU}(x) = \text{scale} \cdot (\max(0, x) + \min(0, \alpha (e^x - 1)))",
            forward=F.selu,
            grad=_selu_grad,
            saves="input",
            inplace=True,
            kinks=(0.0,),
        ),
        Activation(
            "celu",
            "CELU",
            r"\text{CELU}(x) = \max(0, x) + \min(0, \alpha (e^{x/\alpha} - 1))",
            forward=F.celu,
            grad=_celu_grad,
            saves="input",
            inplace=True,
            params=(_ALPHA,),
            check=_check_celu,
            kinks=(0.0,),
            variants=((2.0,),),
        ),
        Activation(
            "gelu",
            "GELU",
            r"\text{GELU}(x) = x \cdot \Phi(x)",
            forward=lambda z, approximate: F.gelu(z, approximate=approximate),
            grad=_gelu_grad,
            grad_plain=_gelu_grad_plain,
            saves="input",
            check=_check_gelu,
            variants=(("tanh",),),
            kinks=(0.0,),
            params=(
                Param(
                    "approximate",
                    "none",
                    "the gelu approximation: ``'none'`` | ``'tanh'``. Default: ``'none'``",
                    annotation=str,
                ),
            ),
        ),
        Activation(
            "silu",
            "SiLU",
            r"\text{SiLU}(x) = x \cdot \sigma(x)",
            forward=F.silu,
            grad=_silu_grad,
            saves="input",
            inplace=True,
        ),
        Activation(
            "mish",
            "Mish",
            r"\text{Mish}(x) = x \cdot \tanh(\text{Softplus}(x))",
            forward=F.mish,
            grad=_mish_grad,
            saves="input",
            inplace=True,
        ),
        Activation(
            "sigmoid",
            "Sigmoid",
            r"\text{Sigmoid}(x) = \frac{1}{1 + e^{-x}}",
            forward=torch.sigmoid,
            forward_=torch.sigmoid_,
            grad=_sigmoid_grad,
            grad_=_sigmoid_grad_,
            grad_plain=_sigmoid_grad_plain,
            saves="output",
            sample=(-8.0, 8.0),
        ),
        Activation(
            "logsigmoid",
            "LogSigmoid",
            r"\text{LogSigmoid}(x) = \log \frac{1}{1 + e^{-x}}",
            forward=F.logsigmoid,
            grad=_logsigmoid_grad,
            saves="input",
        ),
        Activation(
            "tanh",
            "Tanh",
            r"\text{Tanh}(x) = \frac{e^x - e^{-x}}{e^x + e^{-x}}",
            forward=torch.tanh,
            forward_=torch.tanh_,
            grad=_tanh_grad,
            grad_=_tanh_grad_,
            grad_plain=_tanh_grad_plain,
            saves="output",
        ),
        Activation(
            "hardtanh",
            "Hardtanh",
            r"\text{HardTanh}(x) = \min(\max(x, \text{min\_val}), \text{max\_val})",
            forward=F.hardtanh,
            forward_=F.hardtanh_,
            grad=_bounded_grad,
            saves="output",
            inplace=True,
            params=(
                Param("min_val", -1.0, "minimum value of the linear region range. Default: -1"),
                Param("max_val", 1.0, "maximum value of the linear region range. Default: 1"),
            ),
            extra_params=(
                Param("min_value", None, annotation=float | None),
                Param("max_value", None, annotation=float | None),
            ),
            check=_check_hardtanh,
            kinks=(-1.0, 1.0),
            variants=((-2.0, 3.0),),
        ),
        Activation(
            "hardsigmoid",
            "Hardsigmoid",
            r"\text{Hardsigmoid}(x) = \text{ReLU6}(x + 3) / 6",
            forward=F.hardsigmoid,
            forward_=lambda z: F.hardsigmoid(z, inplace=True),
            grad=_hardsigmoid_grad,
            saves="output",
            inplace=True,
            kinks=(-3.0, 3.0),
            sample=(-5.0, 5.0),
            repr_=lambda: "",
        ),
        Activation(
            "hardswish",
            "Hardswish",
            r"\text{Hardswish}(x) = x \cdot \text{ReLU6}(x + 3) / 6",
            forward=F.hardswish,
            grad=_hardswish_grad,
            saves="input",
            inplace=True,
            kinks=(-3.0, 3.0),
            sample=(-5.0, 5.0),
            repr_=lambda: "",
        ),
        Activation(
            "softplus",
            "Softplus",
            r"\text{Softplus}(x) = \frac{1}{\beta} \log(1 + e^{\beta x})",
            forward=F.softplus,
            grad=_softplus_grad,
            saves="input",
            check=_check_softplus,
            variants=((2.0, 1.0),),
            params=(
                Param("beta", 1.0, r"the :math:`\beta` value. Default: 1"),
                Param("threshold", 20.0, "values above this revert to a linear function. Default: 20"),
            ),
        ),
        Activation(
            "softsign",
            "Softsign",
            r"\text{SoftSign}(x) = \frac{x}{1 + |x|}",
            forward=F.softsign,
            grad=_softsign_grad,
            saves="input",
        ),
        Activation(
            "tanhshrink",
            "Tanhshrink",
            r"\text{Tanhshrink}(x) = x - \tanh(x)",
            forward=F.tanhshrink,
            grad=_tanhshrink_grad,
            saves="input",
        ),
        Activation(
            "threshold",
            "Threshold",
            r"y = x \text{ if } x > \text{threshold} \text{ else } \text{value}",
            forward=F.threshold,
            grad=_threshold_grad,
            saves="input",
            inplace=True,
            params=(
                Param("threshold", None, "The value to threshold at", required=True),
                Param("value", None, "The value to replace with", required=True),
            ),
            kinks=(0.1,),
            variants=((0.1, 20.0), (-0.5, -1.0)),
        ),
        Activation(
            "hardshrink",
            "Hardshrink",
            r"\text{HardShrink}(x) = x \text{ if } |x| > \lambda \text{ else } 0",
            forward=F.hardshrink,
            grad=_shrink_grad,
            saves="input",
            params=(_LAMBD,),
            repr_=lambda lambd: f"{lambd}",
            kinks=(-0.5, 0.5),
            variants=((1.0,),),
        ),
        Activation(
            "softshrink",
            "Softshrink",
            r"\text{SoftShrink}(x) = x - \lambda \text{ if } x > \lambda, "
            r"x + \lambda \text{ if } x < -\lambda, 0 \text{ otherwise}",
            forward=F.softshrink,
            grad=_shrink_grad,
            saves="input",
            params=(_LAMBD,),
            check=_check_softshrink,
            repr_=lambda lambd: str(lambd),
            kinks=(-0.5, 0.5),
            variants=((1.0,),),
        ),
    ]


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _entries()}
"""Every elementwise activation, by its functional name."""
