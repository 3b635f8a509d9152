"""``Softmax``, ``Softmin``, ``LogSoftmax`` and ``GLU``: torch.nn's twins with manualgrad's gradients.

Same constructor, attribute (``dim``), ``__constants__`` and ``repr`` as torch.nn, so
:func:`manualgrad.convert` can swap them in place.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from manualgrad import functional as MF

__all__ = ["GLU", "LogSoftmax", "Softmax", "Softmin"]


class _SoftmaxBase(nn.Module):
    __constants__ = ["dim"]
    dim: int | None

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "dim"):
            self.dim = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_SoftmaxBase):
    r"""Apply :math:`\text{Softmax}(x_i) = \frac{\exp(x_i)}{\sum_j \exp(x_j)}` along :attr:`dim`.

    Like :class:`torch.nn.Softmax`. Backward (the Jacobian-vector product, :math:`y` the output):
    :math:`\partial C/\partial x = y \odot (g - \sum_{\text{dim}} g \odot y)`.

    Args:
        dim: the dimension along which Softmax is computed (every slice along it sums to 1).

    Shape:
        - Input: :math:`(*)`, any number of dimensions.
        - Output: :math:`(*)`, same shape as the input, values in [0, 1].

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> m = mnn.Softmax(dim=1)
        >>> m(torch.zeros(2, 4))
        tensor([[0.2500, 0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500, 0.2500]])
    """

    def forward(self, input: Tensor) -> Tensor:
        return MF.softmax(input, self.dim, _stacklevel=5)


class Softmin(_SoftmaxBase):
    r"""Apply :math:`\text{Softmin}(x) = \text{Softmax}(-x)` along :attr:`dim`.

    Like :class:`torch.nn.Softmin`. Backward: :math:`-y \odot (g - \sum_{\text{dim}} g \odot y)`.

    Args:
        dim: the dimension along which Softmin is computed (every slice along it sums to 1).

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, same shape as the input.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> m = mnn.Softmin(dim=1)
        >>> m(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    def forward(self, input: Tensor) -> Tensor:
        return MF.softmin(input, self.dim, _stacklevel=5)


class LogSoftmax(_SoftmaxBase):
    r"""Apply :math:`\log\text{Softmax}(x_i) = x_i - \log\sum_j \exp(x_j)` along :attr:`dim`.

    Like :class:`torch.nn.LogSoftmax`. Backward: :math:`g - e^{y} \sum_{\text{dim}} g`.

    Args:
        dim: the dimension along which LogSoftmax is computed.

    Shape:
        - Input: :math:`(*)`; Output: :math:`(*)`, same shape as the input, values in
          :math:`(-\infty, 0]`.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> m = mnn.LogSoftmax(dim=0)
        >>> m(torch.zeros(2))
        tensor([-0.6931, -0.6931])
    """

    def forward(self, input: Tensor) -> Tensor:
        return MF.log_softmax(input, self.dim, _stacklevel=5)


class GLU(nn.Module):
    r"""Apply the gated linear unit :math:`\text{GLU}(a, b) = a \otimes \sigma(b)`.

    Like :class:`torch.nn.GLU`: the input is split in half along :attr:`dim` into :math:`a` and
    :math:`b`. Backward: :math:`\partial C/\partial a = g \odot \sigma(b)`,
    :math:`\partial C/\partial b = g \odot a \odot \sigma(b)(1 - \sigma(b))`.

    Args:
        dim: the dimension on which to split the input. Default: -1

    Shape:
        - Input: :math:`(\ast_1, N, \ast_2)` where `*` means any number of additional dimensions.
        - Output: :math:`(\ast_1, M, \ast_2)` where :math:`M = N/2`.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> m = mnn.GLU()
        >>> m(torch.randn(4, 2)).shape
        torch.Size([4, 1])
    """

    __constants__ = ["dim"]
    dim: int

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        return MF.glu(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
