"""Small pieces every manualgrad Function shares: forward-AD detection and torch-style input checks.

Conventions of every Function in :mod:`manualgrad.functional`:

* ``forward`` / ``setup_context`` / ``backward`` / ``jvp`` style, ``generate_vmap_rule = True``.
* only ``ctx.save_for_backward`` holds tensors (``save_for_forward`` too while forward AD is on);
  ``ctx`` keeps plain Python values only.
* intermediates the backward needs (a hidden layer's ``z`` or ``a``) are returned from ``forward``
  as extra, hidden outputs, so that the backward stays differentiable through them (double
  backward) and ``setup_context`` can save them.
* ``ctx.needs_input_grad`` decides which of grad_input / grad_weight / grad_bias are computed.
* the backward computes in ``grad_output``'s dtype: under autocast the forward ran in the autocast
  dtype, the saved float32 parameters are cast to it, and autograd casts each gradient back to
  its input's dtype (what ``torch.amp.custom_bwd`` would arrange).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from manualgrad._compat import CLASSIC_SETUP_CONTEXT, call_backward_straight, forward_ad_enabled
from manualgrad._compat import functorch_level as _functorch_level

__all__ = ["TAP", "ManualFunction", "check_same_device_dtype", "forward_ad_enabled", "in_dtype", "shape_str"]


class _Tap:
    """Where the backward of a layer with parameters sends its per-sample terms.

    ``active`` is the open :func:`manualgrad.per_sample` / :func:`manualgrad.clip_per_sample`
    context, ``None`` otherwise. While one is open, ``Linear``, ``DenseStack``, ``Bilinear`` and
    ``PReLU`` hand it δ and their inputs (the factors of each sample's gradient) instead of returning
    their parameters' summed gradients, and the context forms ``p.grad`` once the backward is done.
    """

    active: Any = None


TAP = _Tap()


class ManualFunction(torch.autograd.Function):
    """Base of manualgrad's Functions: ``forward``/``setup_context``/``backward`` plus ``tangent``.

    Subclasses are written once, in the ``setup_context`` style that torch.func and
    ``torch.compile`` need. :meth:`call` then runs one of three classes built from it:

    * the class itself, while a functorch transform (``vmap``, ``grad``, ...) or TorchDynamo
      is at work (``generate_vmap_rule = True``);
    * ``forward_ad_twin``, which adds ``jvp = tangent``, while a transform works with forward AD
      too (``torch.func.jvp``; TorchDynamo cannot trace a Function that defines ``jvp``, so the
      class itself has none);
    * ``eager_twin`` otherwise: the same forward, setup_context, backward and ``jvp`` in the
      classic ``forward(ctx, ...)`` form, which spares ``apply`` the per-call binding of
      ``forward``'s signature that the setup_context form costs (about 20 µs a call on a
      laptop-class CPU); ``forward_ad_twin`` where this torch offers no classic form
      (:mod:`manualgrad._compat`). Since it has ``jvp``, plain forward AD (``fwAD.dual_level``)
      runs it too, and the common call checks for a transform or TorchDynamo only.

    All three have the same name, so the backward graph shows e.g. ``DenseStackBackward``.
    """

    generate_vmap_rule = True
    forward_ad_twin: ClassVar[type[torch.autograd.Function]]
    eager_twin: ClassVar[type[torch.autograd.Function]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_twin" in cls.__dict__:
            return
        common = {"__module__": cls.__module__, "_twin": True}
        cls.forward_ad_twin = type(cls.__name__, (cls,), {"jvp": staticmethod(cls.tangent), **common})
        if CLASSIC_SETUP_CONTEXT is None:  # this torch has no classic form we can reach: no eager twin
            cls.eager_twin = cls.forward_ad_twin
            return
        forward, setup_context = cls.forward, cls.setup_context

        def classic_forward(ctx: Any, *args: Any) -> Any:
            output = forward(*args)
            setup_context(ctx, args, output)
            return output

        cls.eager_twin = type(
            cls.__name__,
            (cls,),
            {
                "forward": staticmethod(classic_forward),
                "setup_context": CLASSIC_SETUP_CONTEXT,
                "jvp": staticmethod(cls.tangent),
                "generate_vmap_rule": False,
                **common,
            },
        )
        call_backward_straight(cls.eager_twin)

    @staticmethod
    def tangent(ctx: Any, *tangents: Any) -> Any:
        raise NotImplementedError("forward-mode AD: this Function defines no tangent")

    @classmethod
    def call(cls, *args: Any) -> Any:
        """``apply`` through the class that fits the current transforms (see the class docstring)."""
        if torch.compiler.is_compiling() or _functorch_level() is not None:
            return (cls.forward_ad_twin if forward_ad_enabled() else cls).apply(*args)
        return cls.eager_twin.apply(*args)


def in_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in the backward's compute dtype (under autocast the forward ran in a lower one)."""
    return t if t.dtype is dtype else t.to(dtype)


def shape_str(t: Tensor | Sequence[int]) -> str:
    shape = t.shape if isinstance(t, Tensor) else t
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_same_device_dtype(fname: str, **tensors: Tensor | None) -> None:
    """Raise torch-style errors when named tensors disagree in device or (outside autocast) dtype."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    (name0, t0), rest = items[0], items[1:]
    for name, t in rest:
        if t.device != t0.device:
            raise RuntimeError(
                f"{fname}(): expected all tensors to be on the same device, but got {name0} on "
                f"{t0.device} and {name} on {t.device}"
            )
    if torch.is_autocast_enabled(t0.device.type):
        return
    for name, t in rest:
        if t.dtype != t0.dtype:
            raise RuntimeError(
                f"{fname}(): expected {name0} and {name} to have the same dtype, but got "
                f"{name0} of dtype {t0.dtype} and {name} of dtype {t.dtype}"
            )
