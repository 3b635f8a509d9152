"""manualgrad: PyTorch layers whose gradients come from hand-derived backward formulas.

* :mod:`manualgrad.functional`: ``torch.autograd.Function`` subclasses (forward + hand-written
  backward) under torch.nn.functional's names.
* :mod:`manualgrad.nn`: drop-in twins of torch.nn modules.
* :func:`manualgrad.convert`: swap a model's torch.nn layers for the twins, in place.
* :data:`manualgrad.activations.ACTIVATIONS`: the registry of activation formulas.
* :class:`manualgrad.per_sample` / :class:`manualgrad.clip_per_sample`: per-sample gradients, norms,
  statistics and one-pass per-sample clipping, from the same formulas (:mod:`manualgrad.per_sample`).
"""

from . import functional, nn
from .activations import ACTIVATIONS
from .convert import convert, twin_of
from .per_sample import clip_per_sample, per_sample

__version__ = "0.1.0"
__all__ = ["ACTIVATIONS", "clip_per_sample", "convert", "functional", "nn", "per_sample", "twin_of"]
