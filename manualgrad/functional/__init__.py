"""manualgrad's functional API: ``torch.nn.functional`` names, manualgrad's hand-derived gradients.

Each op is a :class:`torch.autograd.Function` whose ``backward`` applies the formulas of
``spec/backprop_formulas.md`` (see each module's docstring).
"""

from manualgrad.activations import ACTIVATIONS

from . import activation as _activation
from .activation import Dropout, Elementwise, ElementwiseInplace, PReLU, activation, dropout, prelu
from .dense import Bilinear, DenseStack, Linear, bilinear, dense_stack, linear
from .loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyIndices,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    PointwiseLoss,
    SmoothL1Loss,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    huber_loss,
    kl_div,
    l1_loss,
    mse_loss,
    nll_loss,
    smooth_l1_loss,
)
from .softmax import GLU, LogSoftmax, Softmax, Softmin, glu, log_softmax, softmax, softmin

for _name in ACTIVATIONS:
    globals()[_name] = getattr(_activation, _name)

__all__ = [
    "GLU",
    "BCELoss",
    "BCEWithLogitsLoss",
    "Bilinear",
    "CrossEntropyIndices",
    "CrossEntropyLoss",
    "DenseStack",
    "Dropout",
    "Elementwise",
    "ElementwiseInplace",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "NLLLoss",
    "PReLU",
    "PointwiseLoss",
    "SmoothL1Loss",
    "Softmax",
    "Softmin",
    "activation",
    "bilinear",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "dense_stack",
    "dropout",
    "glu",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "linear",
    "log_softmax",
    "mse_loss",
    "nll_loss",
    "prelu",
    "smooth_l1_loss",
    "softmax",
    "softmin",
    *ACTIVATIONS,
]


def __getattr__(name: str) -> object:  # type checkers: the activations generated from the registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
