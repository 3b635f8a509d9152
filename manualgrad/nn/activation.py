"""Activation modules: one generated twin of torch.nn per registry entry, plus PReLU and Dropout.

Each generated class (``ReLU``, ``LeakyReLU``, ...) takes exactly torch.nn's constructor arguments,
stores them under torch.nn's attribute names (so ``convert``, ``repr`` and ``state_dict`` match) and
calls :func:`manualgrad.functional.activation` with its registry entry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.parameter import Parameter

from manualgrad import functional as MF
from manualgrad.activations import ACTIVATIONS, Activation
from manualgrad.functional.activation import Elementwise

__all__ = ["ActivationModule", "Dropout", "PReLU", *(a.module for a in ACTIVATIONS.values())]


class ActivationModule(nn.Module):
    """Base of the generated activation modules; ``activation`` is the registry entry."""

    activation: ClassVar[Activation]
    inplace: bool = False

    def act_params(self) -> tuple[Any, ...]:
        """The entry's params, read from this module's (torch.nn-named) attributes."""
        return tuple(getattr(self, p.name) for p in self.activation.params)

    def forward(self, input: Tensor) -> Tensor:
        act = self.activation
        if not act.params and not self.inplace and isinstance(input, Tensor):  # ReLU, Tanh, ...: nothing to check
            return Elementwise.call(input, act, ())
        return MF.activation(input, act, *self.act_params(), inplace=self.inplace)

    def extra_repr(self) -> str:
        act = self.activation
        if act.repr_ is not None:
            return act.repr_(*self.act_params())
        body = ", ".join(f"{p.name}={getattr(self, p.name)!r}" for p in act.params)
        if self.inplace:
            body = f"{body}, inplace=True" if body else "inplace=True"
        return body


def _docstring(act: Activation) -> str:
    args = "".join(f"        {p.name}: {p.doc}\n" for p in act.params)
    if act.inplace:
        args += "        inplace: can optionally do the operation in-place. Default: ``False``\n"
    ctor = ", ".join(f"{p.default!r}" for p in act.params if p.required)
    return (
        f"Apply :math:`{act.formula}` element-wise, like :class:`torch.nn.{act.module}`.\n\n"
        f"Backward (manualgrad's own): ``grad_input = grad_output ⊙ σ'`` with "
        f"{(act.grad.__doc__ or act.grad.__name__).strip()}\n\n"
        + (f"    Args:\n{args}\n" if args else "")
        + "    Shape:\n"
        "        - Input: :math:`(*)`, where :math:`*` means any number of dimensions.\n"
        "        - Output: :math:`(*)`, same shape as the input.\n\n"
        "    Examples::\n\n"
        "        >>> import manualgrad.nn as mnn\n"
        f"        >>> m = mnn.{act.module}({'0.1, 20.0' if any(p.required for p in act.params) else ctor})\n"
        "        >>> m(torch.randn(2)).shape\n"
        "        torch.Size([2])\n"
    )


def _make_module(act: Activation) -> type[ActivationModule]:
    """Build ``class ReLU(ActivationModule)`` with ``__init__(self, inplace=False)`` (torch's signature)."""
    sig, sets = ["self"], []
    for p in (*act.params, *act.extra_params):
        sig.append(p.name if p.required else f"{p.name}={p.default!r}")
    if act.inplace:
        sig.insert(1 + len(act.params), "inplace=False")
        sets.append("self.inplace = inplace")
    names = ", ".join(p.name for p in (*act.params, *act.extra_params))
    checked = ", ".join(p.name for p in act.params)
    body = [
        "super(cls, self).__init__()",
        *(
            [f"{checked}{',' if len(act.params) == 1 else ''} = _act.normalise({names})"]
            if act.check is not None
            else []
        ),
        *(f"self.{p.name} = {p.name}" for p in act.params),
        *sets,
    ]
    src = f"def __init__({', '.join(sig)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = {"_act": act}
    cls = type(act.module, (ActivationModule,), {"activation": act, "__module__": __name__, "__doc__": _docstring(act)})
    namespace["cls"] = cls
    exec(src, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{act.module}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    cls.__constants__ = [p.name for p in act.params] + (["inplace"] if act.inplace else [])  # type: ignore[attr-defined]
    return cls


for _act in ACTIVATIONS.values():
    globals()[_act.module] = _make_module(_act)


def __getattr__(name: str) -> type[ActivationModule]:  # type checkers: the generated classes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PReLU(nn.Module):
    r"""Apply :math:`\text{PReLU}(x) = \max(0,x) + a \min(0,x)` with a learnable :math:`a`.

    Like :class:`torch.nn.PReLU`. Backward: ``grad_input = grad_output ⊙ (1 if x > 0 else a)``,
    ``grad_weight = Σ grad_output ⊙ x ⊙ 1[x ≤ 0]`` over every dim but the channel dim.

    Args:
        num_parameters: number of :math:`a` to learn: 1, or the number of channels (dim 1 of the
            input; a 1-D input has one channel). Default: 1
        init: the initial value of :math:`a`. Default: 0.25

    Shape:
        - Input: :math:`(*)`; Output: the same shape.

    Examples::

        >>> import manualgrad.nn as mnn
        >>> m = mnn.PReLU(3)
        >>> m(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    __constants__ = ["num_parameters"]
    num_parameters: int

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device: Any = None, dtype: Any = None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_parameters = num_parameters
        super().__init__()
        self.init = init
        self.weight = Parameter(torch.empty(num_parameters, **factory_kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.constant_(self.weight, self.init)

    def forward(self, input: Tensor) -> Tensor:
        return MF.prelu(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class Dropout(nn.Module):
    r"""Zero elements with probability :attr:`p` during training, like :class:`torch.nn.Dropout`.

    The surviving elements are scaled by :math:`\frac{1}{1-p}`; backward multiplies by the same mask.
    The same seed draws the same mask as :class:`torch.nn.Dropout` on CPU.

    Args:
        p: probability of an element to be zeroed. Default: 0.5
        inplace: If set to ``True``, will do this operation in-place. Default: ``False``

    Examples::

        >>> import manualgrad.nn as mnn
        >>> m = mnn.Dropout(p=0.2)
        >>> m(torch.randn(20, 16)).shape
        torch.Size([20, 16])
    """

    __constants__ = ["p", "inplace"]
    p: float
    inplace: bool

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if p < 0 or p > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return MF.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
