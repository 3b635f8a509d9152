"""``Linear`` and ``Bilinear``: torch.nn's twins whose gradients come from manualgrad's formulas."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.parameter import Parameter

from manualgrad import functional as MF

__all__ = ["Bilinear", "Linear"]


class Linear(nn.Module):
    r"""Apply an affine transformation :math:`y = xA^T + b`, like :class:`torch.nn.Linear`.

    The gradients are the spec's dense-layer formulas (:func:`manualgrad.functional.linear`):
    ``grad_weight = δᵀX`` (summed over every leading dim), ``grad_bias = Σδ``,
    ``grad_input = δW``.

    Args:
        in_features: size of each input sample
        out_features: size of each output sample
        bias: If set to ``False``, the layer will not learn an additive bias. Default: ``True``

    Shape:
        - Input: :math:`(*, H_{in})` where :math:`*` means any number of dimensions including none.
        - Output: :math:`(*, H_{out})`.

    Attributes:
        weight: the learnable weights of shape :math:`(\text{out\_features}, \text{in\_features})`,
            initialised as torch.nn.Linear's (the same draws for the same seed).
        bias: the learnable bias of shape :math:`(\text{out\_features})`.

    Examples::

        >>> import manualgrad.nn as mnn
        >>> m = mnn.Linear(20, 30)
        >>> m(torch.randn(128, 20)).size()
        torch.Size([128, 30])
    """

    __constants__ = ["in_features", "out_features"]
    in_features: int
    out_features: int
    weight: Tensor

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias, exactly as :class:`torch.nn.Linear`."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return MF.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Bilinear(nn.Module):
    r"""Apply a bilinear transformation :math:`y = x_1^T A x_2 + b`, like :class:`torch.nn.Bilinear`.

    Args:
        in1_features: size of each first input sample
        in2_features: size of each second input sample
        out_features: size of each output sample
        bias: If set to ``False``, the layer will not learn an additive bias. Default: ``True``

    Shape:
        - Input1: :math:`(*, H_{in1})`, Input2: :math:`(*, H_{in2})`, the same leading dims.
        - Output: :math:`(*, H_{out})`.

    Examples::

        >>> import manualgrad.nn as mnn
        >>> m = mnn.Bilinear(20, 30, 40)
        >>> m(torch.randn(128, 20), torch.randn(128, 30)).size()
        torch.Size([128, 40])
    """

    __constants__ = ["in1_features", "in2_features", "out_features"]
    in1_features: int
    in2_features: int
    out_features: int
    weight: Tensor

    def __init__(
        self,
        in1_features: int,
        in2_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in1_features = in1_features
        self.in2_features = in2_features
        self.out_features = out_features
        self.weight = Parameter(torch.empty((out_features, in1_features, in2_features), **factory_kwargs))
        if bias:
            self.bias = Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/√in1_features, exactly as :class:`torch.nn.Bilinear`."""
        bound = 1 / math.sqrt(self.weight.size(1))
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        return MF.bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )
