"""Helpers for the tests: inspecting the backward graph."""

from __future__ import annotations

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
