"""The torch internals manualgrad uses, each with the fallback it takes where a torch lacks it.

Every fallback keeps results correct and gives up only speed: where an internal is missing,
manualgrad stops ruling out what that internal would have ruled out (a functorch transform, a
forward-AD level, a batched tensor) and takes the path that is right in every case.
``tests/test_compat.py`` imports manualgrad with each internal removed and checks gradients
against torch's. (``torch._inductor`` is imported where a kernel is compiled, in
:mod:`manualgrad.fusion`, whose failure to import or compile leaves the eager formulas.)
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

__all__ = [
    "CLASSIC_SETUP_CONTEXT",
    "call_backward_straight",
    "forward_ad_enabled",
    "functorch_level",
    "graph_task_id",
    "is_legacy_batched",
    "nn_kernels",
    "reduction_args",
    "storage_use_count",
]

# torch._C._functorch.maybe_current_level: the innermost functorch transform's level, None outside
# any. Without it no transform can be ruled out: Functions always run in the setup_context form
# that transforms need, and no fused kernel is used.
try:
    from torch._C._functorch import maybe_current_level as functorch_level
except ImportError:

    def functorch_level() -> int | None:
        return -1  # "a transform may be active"


# torch._C._functorch.is_legacy_batchedtensor: whether a tensor is vmap's (or batched gradients')
# batched tensor. Without it every tensor may be one, and no fused kernel is used.
try:
    from torch._C._functorch import is_legacy_batchedtensor as is_legacy_batched
except ImportError:

    def is_legacy_batched(tensor: Tensor) -> bool:
        return True


# torch._C._current_graph_task_id: which backward pass is running (-1 outside one). Without it a
# per-sample context cannot tell a second backward inside it from the first, and cannot refuse it.
try:
    from torch._C import _current_graph_task_id as graph_task_id
except ImportError:

    def graph_task_id() -> int:
        return -1  # "unknown": every backward looks like the first


# torch._C._storage_Use_Count: how many tensors (and storage objects) share a storage. Without it no
# buffer is known to be unshared: per_sample allocates every grad_sample afresh (slower, same values).
try:
    from torch._C import _storage_Use_Count as _use_count

    def _raw_use_count(tensor: Tensor) -> int:
        return int(_use_count(tensor.untyped_storage()._cdata))

    # What a tensor alone on its storage reads: 2 on torch 2.14 (the temporary storage object this
    # call makes counts too), 1 on torch 2.6; each further tensor or view on the storage adds one.
    _ALONE = _raw_use_count(torch.ones(1))

    def storage_use_count(tensor: Tensor) -> int | None:
        """References to ``tensor``'s storage: 1 for a tensor alone on it, 2 with a view, ..."""
        return _raw_use_count(tensor) - _ALONE + 1

except ImportError:

    def storage_use_count(tensor: Tensor) -> int | None:
        return None  # unknown


# torch.autograd.forward_ad._current_level: the active forward-AD level, -1 without one. Without
# it forward AD can only be ruled out inside torch.compile (which has none): Functions run with
# their jvp and save their tensors for it too.
if isinstance(getattr(forward_ad, "_current_level", None), int):

    def forward_ad_enabled() -> bool:
        """Whether a forward-mode AD level is active (then ``jvp`` needs ``save_for_forward``)."""
        return forward_ad._current_level >= 0

else:

    def forward_ad_enabled() -> bool:
        """Whether a forward-mode AD level may be active (this torch does not say)."""
        return not torch.compiler.is_compiling()


# torch.autograd.function._SingleLevelFunction.setup_context: the placeholder that tells
# Function.apply that ``forward`` takes ``ctx`` (the classic form). Without it, or where apply no
# longer reads it so, there is no eager twin: Functions run in the setup_context form (about 20 µs
# a call slower, same results).
def _classic_setup_context() -> Any:
    try:
        from torch.autograd.function import _SingleLevelFunction

        placeholder = _SingleLevelFunction.__dict__["setup_context"]
    except (ImportError, KeyError):
        return None
    return placeholder if classic_form_works(placeholder) else None


def classic_form_works(placeholder: Any) -> bool:
    """Whether a Function whose ``setup_context`` is ``placeholder`` runs ``forward(ctx, ...)``."""

    class Probe(torch.autograd.Function):
        setup_context = placeholder

        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            ctx.scale = 3.0
            return x * 2

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            return grad * ctx.scale

    x = torch.ones(1, requires_grad=True)
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(Probe.apply(x), x)
    except Exception:
        return False
    return grad.item() == 3.0


CLASSIC_SETUP_CONTEXT = _classic_setup_context()


# torch.autograd.Function._backward_cls: the class of a Function's backward nodes, whose ``apply``
# torch's engine calls. Without it the nodes stay torch's (a few µs a node slower, same results).
def call_backward_straight(fn: type[torch.autograd.Function]) -> None:
    """Let ``fn``'s backward node call ``fn.backward`` straight (manualgrad's eager twins).

    torch's node (``BackwardCFunction.apply``) looks up, on every call, whether the Function defines
    ``vjp`` instead of ``backward`` and whether it takes its gradients boxed; for these Functions the
    answers never change (``backward``, unboxed), so the node's ``apply`` is ``backward`` itself (the
    engine calls ``node.apply(*grads)``, and the node is the ``ctx``): about 1.5 points of the small
    MLP's hand-composed step (``python -m benchmarks.ab``). Where this torch has no node class
    (``_backward_cls``), or ``fn`` defines ``vjp`` or boxed gradients, the node stays torch's.
    """
    node = getattr(fn, "_backward_cls", None)
    if node is None or getattr(fn, "boxed_grads_call", False) or fn.vjp is not torch.autograd.Function.vjp:
        return
    node.apply = fn.backward  # a plain function on the node class: called as a method, ctx = the node


# torch._C._nn: torch's loss kernels, called as torch.nn.functional does. Without it the same
# operators through the dispatcher (torch.ops.aten; a few µs more a call).
nn_kernels: Any = getattr(torch._C, "_nn", None) or torch.ops.aten


# torch.nn._reduction: the parsing of losses' ``reduction`` (and legacy ``size_average``/``reduce``)
# arguments that torch.nn's losses share. Without it, the same rules, messages and warnings here.
def _get_enum(reduction: str) -> int:
    if reduction == "elementwise_mean":
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.", stacklevel=2)
        return 1
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return ("none", "mean", "sum").index(reduction)


def _legacy_get_string(size_average: bool | None, reduce: bool | None, emit_warning: bool = True) -> str:
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    ret = "mean" if size_average and reduce else "sum" if reduce else "none"
    if emit_warning:
        warnings.warn(
            f"size_average and reduce args will be deprecated, please use reduction='{ret}' instead.", stacklevel=2
        )
    return ret


try:
    from torch.nn import _reduction as reduction_args
except ImportError:
    reduction_args = SimpleNamespace(get_enum=_get_enum, legacy_get_string=_legacy_get_string)  # type: ignore[assignment]
