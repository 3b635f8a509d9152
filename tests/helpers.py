"""Helpers for the tests: inspecting the backward graph; reference comparisons (forward AD, double backward)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from manualgrad.functional._common import ManualFunction

#: native nodes that compute no derivative: pure views and the leaf accumulators.
PURE_NODES = frozenset(
    {
        "torch::autograd::AccumulateGrad",
        "ViewBackward0",
        "ReshapeAliasBackward0",
        "UnsafeViewBackward0",
        "AliasBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "ExpandBackward0",
    }
)


def graph_nodes(output: Tensor) -> list[object]:
    """Every node of ``output``'s backward graph."""
    seen, stack, nodes = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return nodes


def foreign_nodes(output: Tensor) -> list[str]:
    """Names of the nodes that are neither manualgrad Functions nor pure view/leaf nodes."""
    bad = []
    for node in graph_nodes(output):
        fwd = getattr(node, "_forward_cls", None)
        if isinstance(fwd, type) and issubclass(fwd, ManualFunction):
            continue
        if node.name() not in PURE_NODES:  # type: ignore[attr-defined]
            bad.append(node.name())  # type: ignore[attr-defined]
    return bad


def assert_ref(got: Tensor | None, want: Tensor | None, rtol: float = 1e-7) -> None:
    """``got`` is ``want`` to ``rtol``, elementwise and relative to the largest ``|want|`` (so that
    elements near zero do not need an absolute tolerance of their own): a 1e-4 relative error fails."""
    assert (got is None) == (want is None)
    if got is None or want is None:
        return
    finite = want.detach()[want.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=rtol * scale, equal_nan=True)


def assert_all_ref(got: Sequence[Tensor | None], want: Sequence[Tensor | None], rtol: float = 1e-7) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        try:
            assert_ref(a, b, rtol)
        except AssertionError as err:
            raise AssertionError(f"result {i}: {err}") from None


def tangent_of(fn: Callable[..., Tensor], primals: Sequence[Tensor], tangents: Sequence[Tensor | None]) -> Tensor:
    """The output tangent of ``fn`` at ``primals`` (``None``: no tangent on that argument)."""
    with fwAD.dual_level():
        duals = [p if t is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)]
        out = fwAD.unpack_dual(fn(*duals)).tangent
    assert out is not None
    return out


def second_order(fn: Callable[..., Tensor], inputs: Sequence[Tensor], seed: int = 1) -> tuple[Tensor, ...]:
    """∂/∂inputs of ⟨∂⟨fn, g⟩/∂inputs, v⟩ for fixed random g and v: the double-backward path.

    Where torch has no double backward (hardsigmoid), the central difference of its first-order
    gradient in float64 (step 1e-6: exact for a piecewise-linear function, ~1e-10 otherwise).
    """
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    vs = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in inputs]

    def first(*args: Tensor, create_graph: bool) -> Tensor:
        grads = torch.autograd.grad(fn(*args), args, g, create_graph=create_graph)
        return sum((gr * v).sum() for gr, v in zip(grads, vs, strict=True))  # type: ignore[return-value]

    total = first(*inputs, create_graph=True)
    if not total.requires_grad:  # linear in every input: all second derivatives are zero
        return tuple(torch.zeros_like(t) for t in inputs)
    try:
        second = torch.autograd.grad(total, inputs, allow_unused=True)
        return tuple(torch.zeros_like(t) if s is None else s for s, t in zip(second, inputs, strict=True))
    except RuntimeError as err:
        if "not implemented" not in str(err):
            raise
    result = []
    for k, t in enumerate(inputs):
        flat = torch.zeros(t.numel(), dtype=t.dtype)
        for i in range(t.numel()):
            shifted = []
            for step in (1e-6, -1e-6):
                args = [a.detach().clone().requires_grad_() for a in inputs]
                with torch.no_grad():
                    args[k].view(-1)[i] += step
                shifted.append(first(*args, create_graph=False))
            flat[i] = (shifted[0] - shifted[1]) / 2e-6
        result.append(flat.reshape(t.shape))
    return tuple(result)
