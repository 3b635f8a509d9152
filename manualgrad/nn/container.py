"""``Sequential`` that fuses Linear+activation runs into one Function, and the ``MLP`` built on it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_globals

from manualgrad.activations import ACTIVATIONS
from manualgrad.functional.dense import DenseStack, Layer, check_stack

from .activation import ActivationModule, Dropout
from .linear import Linear

__all__ = ["MLP", "Sequential"]

_NO_ACTIVATION: Layer = (None, ())


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    g = _module_globals
    return bool(
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


class Sequential(nn.Sequential):
    """:class:`torch.nn.Sequential` that runs each ``Linear → activation → Linear ...`` run as one Function.

    A run of :class:`~manualgrad.nn.Linear` layers, each optionally followed by a registry
    activation module, is computed by :class:`~manualgrad.functional.dense.DenseStack`: one
    autograd node instead of one per layer, activations applied in place on the fresh
    pre-activation. The gradients are exactly those of the layers run one by one (the same
    formulas compute both). Modules with hooks (and runs while global module hooks exist) are run
    one by one, so every hook still fires.

    Unlike the op twins this container subclasses its torch.nn counterpart: indexing, slicing,
    ``append`` and ``state_dict`` are torch.nn.Sequential's own.

    Set ``save_dtype = torch.bfloat16`` to save the hidden activations for backward in bfloat16
    (opt-in memory saving: about half the activation memory, gradients from rounded activations,
    first-order only).

    Examples::

        >>> import manualgrad.nn as mnn
        >>> net = mnn.Sequential(mnn.Linear(4, 8), mnn.ReLU(), mnn.Linear(8, 2))
        >>> net(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    save_dtype: torch.dtype | None = None

    def forward(self, input: Tensor) -> Tensor:
        if _global_hooks():
            return super().forward(input)
        modules = list(self._modules.values())
        i, n = 0, len(modules)
        while i < n:
            plan: list[Layer] = []
            params: list[Tensor | None] = []
            j = i
            while j < n and type(modules[j]) is Linear and not _hooked(modules[j]):
                weights = modules[j]._parameters
                params += (weights["weight"], weights["bias"])
                act = modules[j + 1] if j + 1 < n else None
                if isinstance(act, ActivationModule) and not _hooked(act):
                    plan.append((act.activation, act.act_params()))
                    j += 2
                else:
                    plan.append(_NO_ACTIVATION)
                    j += 1
            if len(plan) > 1 or (plan and plan[0] is not _NO_ACTIVATION):
                check_stack(input, params)
                input = DenseStack.call(input, tuple(plan), self.save_dtype, *params)[0]
                i = j
            else:  # anything else, or a lone Linear: the module itself
                input = modules[i](input)
                i += 1
        return input


class MLP(Sequential):
    """A multilayer perceptron: ``Linear → activation [→ Dropout]`` per hidden layer, then ``Linear``.

    Args:
        in_features: size of each input sample.
        hidden_features: sizes of the hidden layers.
        out_features: size of each output sample.
        activation: a registry activation name (``"relu"``, ``"gelu"``, ``"tanh"``, ...).
        dropout: dropout probability after each hidden activation (0 adds no Dropout layers).
        bias: whether the Linear layers learn a bias.
        save_dtype: save hidden activations for backward in this dtype (``torch.bfloat16``
            halves their memory); ``None`` (default) saves them as computed.

    Its layers and state_dict keys are those of the same ``torch.nn.Sequential``
    (``0.weight``, ``0.bias``, ``2.weight``, ...).

    Examples::

        >>> import manualgrad.nn as mnn
        >>> mlp = mnn.MLP(784, [256, 256], 10, activation="gelu")
        >>> mlp(torch.randn(2, 784)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        save_dtype: torch.dtype | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: expected activation to be one of {sorted(ACTIVATIONS)}, but got {activation!r}")
        from . import activation as _act_modules

        act_cls = getattr(_act_modules, ACTIVATIONS[activation].module)
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden_features]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [Linear(fan_in, fan_out, bias, device, dtype), act_cls()]
            if dropout > 0:
                layers.append(Dropout(dropout))
        layers.append(Linear(sizes[-1], out_features, bias, device, dtype))
        super().__init__(*layers)
        if save_dtype is not None:
            self.save_dtype = save_dtype
