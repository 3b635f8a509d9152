"""``torch.nn`` twins whose gradients come from manualgrad's hand-derived formulas.

``import manualgrad.nn as mnn``; ``mnn.Linear(...)``, ``mnn.ReLU()``, ... take the same arguments as
torch.nn's, hold the same parameters and state_dict, and give the same results.
"""

from manualgrad.activations import ACTIVATIONS

from . import activation as _activation
from .activation import ActivationModule, Dropout, PReLU
from .container import MLP, Sequential
from .linear import Bilinear, Linear
from .loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    KLDivLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)
from .softmax import GLU, LogSoftmax, Softmax, Softmin

for _entry in ACTIVATIONS.values():
    globals()[_entry.module] = getattr(_activation, _entry.module)

__all__ = [
    "GLU",
    "MLP",
    "ActivationModule",
    "BCELoss",
    "BCEWithLogitsLoss",
    "Bilinear",
    "CrossEntropyLoss",
    "Dropout",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "NLLLoss",
    "PReLU",
    "Sequential",
    "SmoothL1Loss",
    "Softmax",
    "Softmin",
    *(a.module for a in ACTIVATIONS.values()),
]


def __getattr__(name: str) -> type[ActivationModule]:  # type checkers: the generated classes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
