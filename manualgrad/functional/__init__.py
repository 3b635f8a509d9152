"""manualgrad's functional API: ``torch.nn.functional`` names, manualgrad's hand-derived gradients.

Each op is a :class:`torch.autograd.Function` whose ``backward`` applies the formulas of
``spec/backprop_formulas.md`` (see each module's docstring).
"""

from manualgrad.activations import ACTIVATIONS

from . import activation as _activation
from .activation import Dropout, Elementwise, PReLU, activation, dropout, prelu
from .dense import Bilinear, DenseStack, bilinear, dense_stack, linear

for _name in ACTIVATIONS:
    globals()[_name] = getattr(_activation, _name)

__all__ = [
    "Bilinear",
    "DenseStack",
    "Dropout",
    "Elementwise",
    "PReLU",
    "activation",
    "bilinear",
    "dense_stack",
    "dropout",
    "linear",
    "prelu",
    *ACTIVATIONS,
]


def __getattr__(name: str) -> object:  # type checkers: the activations generated from the registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
