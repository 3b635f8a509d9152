"""manualgrad: PyTorch layers whose gradients come from hand-derived backward formulas.

* :mod:`manualgrad.functional`: ``torch.autograd.Function`` subclasses (forward + hand-written
  backward) under torch.nn.functional's names.
* :mod:`manualgrad.nn`: drop-in twins of torch.nn modules.
* :func:`manualgrad.convert`: swap a model's torch.nn layers for the twins, in place.
* :data:`manualgrad.activations.ACTIVATIONS`: the registry of activation formulas.
"""

from . import functional, nn
from .activations import ACTIVATIONS
from .convert import convert, twin_of

__version__ = "0.1.0"
__all__ = ["ACTIVATIONS", "convert", "functional", "nn", "twin_of"]
