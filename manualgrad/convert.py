"""``convert(model)``: swap torch.nn layers for their manualgrad twins, in place."""

from __future__ import annotations

from torch import nn

import manualgrad.nn as mnn

__all__ = ["convert", "twin_of"]


def twin_of(module: nn.Module) -> type[nn.Module] | None:
    """The manualgrad twin class of ``module``'s exact torch.nn class, or ``None``.

    Only exact torch.nn classes have twins: a user subclass (say ``class MyLinear(nn.Linear)``) may
    override ``forward`` and is left alone.
    """
    name = type(module).__name__
    if getattr(nn, name, None) is not type(module) or name == "MLP":
        return None
    twin = getattr(mnn, name, None) if name in mnn.__all__ else None
    return twin if isinstance(twin, type) and issubclass(twin, nn.Module) else None


def convert(model: nn.Module) -> nn.Module:
    """Swap every supported torch.nn submodule of ``model`` for its manualgrad twin, in place.

    The twin takes over the module's attributes as they are: the very same Parameter and buffer
    objects (an optimizer built before still holds them), hooks, ``training`` flag and options.
    Modules without a twin are left untouched and their children are converted.

    Returns:
        ``model`` itself, or its twin where ``model`` is itself a supported module.

    Example:
        >>> import torch, manualgrad
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> w = net[0].weight
        >>> net = manualgrad.convert(net)
        >>> type(net[1]).__module__, net[0].weight is w
        ('manualgrad.nn.activation', True)
    """
    for name, child in list(model.named_children()):
        new = convert(child)
        if new is not child:
            setattr(model, name, new)
    twin = twin_of(model)
    if twin is None:
        return model
    new_model = twin.__new__(twin)
    new_model.__dict__.update(model.__dict__)
    return new_model
