r"""Loss modules: torch.nn's twins whose gradients come from :mod:`manualgrad.functional.loss`.

Each class takes torch.nn's constructor arguments, stores torch.nn's attributes (``reduction``,
``ignore_index``, ...) and registers torch.nn's buffers (``weight``, ``pos_weight``), so
``state_dict``, ``repr`` and :func:`manualgrad.convert` match torch.nn.
"""

from __future__ import annotations

from torch import Tensor, nn

from manualgrad import functional as MF
from manualgrad._compat import reduction_args as _Reduction

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "MSELoss",
    "NLLLoss",
    "SmoothL1Loss",
]


class _Loss(nn.Module):
    """torch.nn's ``_Loss``: holds ``reduction`` (legacy ``size_average``/``reduce`` mapped)."""

    reduction: str

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            self.reduction = _Reduction.legacy_get_string(size_average, reduce)
        else:
            self.reduction = reduction


class _WeightedLoss(_Loss):
    """torch.nn's ``_WeightedLoss``: a ``weight`` buffer (``None`` when not given)."""

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class MSELoss(_Loss):
    r"""Mean squared error :math:`\ell_n = (x_n - y_n)^2`, like :class:`torch.nn.MSELoss`.

    .. math::
        \ell(x, y) = \begin{cases} L, & \text{'none'} \\ \operatorname{mean}(L), & \text{'mean'}
        \\ \operatorname{sum}(L), & \text{'sum'} \end{cases}

    Backward: :math:`\partial\ell_n/\partial x_n = 2(x_n - y_n) = -\partial\ell_n/\partial y_n`.

    Args:
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> loss = mnn.MSELoss()
        >>> loss(torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor(5.)
    """

    __constants__ = ["reduction"]

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    r"""Mean absolute error :math:`\ell_n = |x_n - y_n|`, like :class:`torch.nn.L1Loss`.

    Backward: :math:`\partial\ell_n/\partial x_n = \text{sign}(x_n - y_n) = -\partial\ell_n/\partial y_n`.

    Args:
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.L1Loss()(torch.tensor([1.0, -3.0]), torch.zeros(2))
        tensor(2.)
    """

    __constants__ = ["reduction"]

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.l1_loss(input, target, reduction=self.reduction)


class HuberLoss(_Loss):
    r"""Huber loss, like :class:`torch.nn.HuberLoss`.

    .. math::
        \ell_n = \begin{cases} 0.5 (x_n - y_n)^2, & |x_n - y_n| < \delta \\
        \delta (|x_n - y_n| - 0.5 \delta), & \text{otherwise} \end{cases}

    Backward: :math:`\partial\ell_n/\partial x_n = \text{clamp}(x_n - y_n, -\delta, \delta)`.

    Args:
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``
        delta: where the loss turns from quadratic to linear; positive. Default: 1.0

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.HuberLoss(reduction="sum")(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(2.6250)
    """

    __constants__ = ["reduction", "delta"]

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        if not isinstance(delta, (float, int)):
            raise TypeError(f"delta must be a float or int, got: {type(delta)}")
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(_Loss):
    r"""Smooth L1 loss, like :class:`torch.nn.SmoothL1Loss`.

    .. math::
        \ell_n = \begin{cases} 0.5 (x_n - y_n)^2 / \beta, & |x_n - y_n| < \beta \\
        |x_n - y_n| - 0.5 \beta, & \text{otherwise} \end{cases}

    Backward: :math:`\partial\ell_n/\partial x_n = \text{clamp}((x_n - y_n)/\beta, -1, 1)`.

    Args:
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``
        beta: where the loss turns from quadratic to linear; non-negative. Default: 1.0

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.SmoothL1Loss(reduction="sum")(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(2.6250)
    """

    __constants__ = ["reduction"]

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        beta: float = 1.0,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class CrossEntropyLoss(_WeightedLoss):
    r"""Cross entropy of logits and class indices or probabilities, like :class:`torch.nn.CrossEntropyLoss`.

    .. math::
        \ell_n = -\sum_{c} w_c\, y_{s,n,c} \log \frac{\exp(x_{n,c})}{\sum_{i} \exp(x_{n,i})},
        \qquad y_s = (1 - \varepsilon)\, y + \varepsilon / C

    with :math:`y` the one-hot target (zero for ``ignore_index``) or the given probabilities.
    ``'mean'`` divides by :math:`\sum_n w_{y_n}` (class indices) or :math:`N` (probabilities).
    Backward, fused: :math:`\partial\ell/\partial x = (\text{softmax}(x) \sum_c a_c - a) / \text{norm}`,
    :math:`a = w \odot y_s`, i.e. :math:`(\text{softmax}(x) - y_s)/\text{norm}` without weight.

    Args:
        weight: a manual rescaling weight given to each class, of size :math:`C`.
        size_average: deprecated (see :attr:`reduction`).
        ignore_index: a target value that is ignored (class indices only). Default: -100
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``
        label_smoothing: :math:`\varepsilon \in [0, 1]`. Default: 0.0

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - Target: class indices :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)` (long), or
          probabilities of the input's shape (float).
        - Output: scalar, or the target's shape without :math:`C` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> loss = mnn.CrossEntropyLoss()
        >>> x = torch.zeros(2, 4, requires_grad=True)
        >>> loss(x, torch.tensor([1, 3]))
        tensor(1.3863, grad_fn=<CrossEntropyIndicesBackward>)
    """

    __constants__ = ["ignore_index", "reduction", "label_smoothing"]
    ignore_index: int
    label_smoothing: float

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class NLLLoss(_WeightedLoss):
    r"""Negative log likelihood of log-probabilities, like :class:`torch.nn.NLLLoss`.

    .. math::
        \ell_n = -w_{y_n} x_{n, y_n}, \qquad
        \ell = \sum_n \ell_n \Big/ \sum_n w_{y_n} \ (\text{'mean'})

    (samples with :math:`y_n` = ``ignore_index`` left out). Backward:
    :math:`\partial\ell_n/\partial x_{n,c} = -w_{y_n} [c = y_n]`.

    Args:
        weight: a manual rescaling weight given to each class, of size :math:`C`.
        size_average: deprecated (see :attr:`reduction`).
        ignore_index: a target value that is ignored. Default: -100
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_K)`.
        - Target: :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_K)`, class indices.
        - Output: scalar, or the target's shape for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.NLLLoss()(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([0, 1]))
        tensor(2.5000)
    """

    __constants__ = ["ignore_index", "reduction"]
    ignore_index: int

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(_WeightedLoss):
    r"""Binary cross entropy of probabilities, like :class:`torch.nn.BCELoss`.

    .. math::
        \ell_n = -w_n [y_n \log x_n + (1 - y_n) \log(1 - x_n)]

    (the logs clamped at -100). Backward:
    :math:`\partial\ell_n/\partial x_n = w_n (x_n - y_n) / \max(x_n (1 - x_n), 10^{-12})`,
    :math:`\partial\ell_n/\partial y_n = -w_n \operatorname{logit}(x_n)`.

    Args:
        weight: a manual rescaling weight, broadcast to the input's shape.
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``

    Shape:
        - Input: :math:`(*)` in [0, 1]; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.BCELoss()(torch.tensor([0.5]), torch.tensor([1.0]))
        tensor(0.6931)
    """

    __constants__ = ["reduction"]

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    r"""Binary cross entropy of logits, like :class:`torch.nn.BCEWithLogitsLoss`.

    .. math::
        \ell_n = -w_n [p\, y_n \log \sigma(x_n) + (1 - y_n) \log(1 - \sigma(x_n))]

    with ``pos_weight`` :math:`p` (per class, broadcast along the last dim). Backward:
    :math:`\partial\ell_n/\partial x_n = w_n (\sigma(x_n)(1 + (p - 1) y_n) - p\, y_n)`,
    :math:`\partial\ell_n/\partial y_n = w_n (p \log(1 + e^{-x_n}) - \log(1 + e^{x_n}))`.

    Args:
        weight: a manual rescaling weight, broadcast to the input's shape.
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``
        pos_weight: a weight of positive examples, broadcast with the target.

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> mnn.BCEWithLogitsLoss(pos_weight=torch.ones(1))(torch.zeros(1), torch.ones(1))
        tensor(0.6931)
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )


class KLDivLoss(_Loss):
    r"""Kullback-Leibler divergence of log-probabilities, like :class:`torch.nn.KLDivLoss`.

    .. math::
        \ell_n = y_n (\log y_n - x_n) \quad\text{or, with log\_target,}\quad
        \ell_n = e^{y_n} (y_n - x_n)

    ``'batchmean'`` divides the sum by the batch size (the mathematical KL divergence).
    Backward: :math:`\partial\ell_n/\partial x_n = -y_n` (:math:`-e^{y_n}`),
    :math:`\partial\ell_n/\partial y_n = \log y_n + 1 - x_n` (:math:`e^{y_n}(y_n + 1 - x_n)`).

    Args:
        size_average: deprecated (see :attr:`reduction`).
        reduce: deprecated (see :attr:`reduction`).
        reduction: ``'none'`` | ``'batchmean'`` | ``'sum'`` | ``'mean'``. Default: ``'mean'``
        log_target: whether the target is given as log-probabilities. Default: ``False``

    Shape:
        - Input: :math:`(*)`; Target: :math:`(*)`, same shape as the input.
        - Output: scalar, or :math:`(*)` for ``'none'``.

    Examples::

        >>> import torch, manualgrad.nn as mnn
        >>> loss = mnn.KLDivLoss(reduction="batchmean")
        >>> loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
        tensor(-0.6931)
    """

    __constants__ = ["reduction"]

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        log_target: bool = False,
    ) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
