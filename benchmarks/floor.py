"""Where a small training step's time goes: manualgrad's ways of running a ReLU MLP against minimal
``torch.autograd.Function``\\ s that run the very same ops.

Every variant is one training step (``zero_grad``, forward, cross entropy, backward, SGD with
momentum) of the same weights on one fixed batch; the steps run interleaved in one process, the
order rotating each round; ratio = median over rounds of (variant / native). Library defaults:
kernels compile only once they have paid, so in a run of a few seconds the eager formulas run.

* ``native``: torch.nn layers, ``nn.CrossEntropyLoss``;
* ``fused``: ``manualgrad.convert(model)`` (one ``DenseStack`` node), ``mnn.CrossEntropyLoss``;
* ``fused, torch loss``: the same stack with torch's loss;
* ``fused, no bookkeeping``: that, with ``FUSION.enabled = False`` during the step (no kernel
  bookkeeping: no break-even timing, no kernel lookup);
* ``minimal fused``: one minimal Function for the whole MLP (forward ``F.linear`` + in-place
  ``relu_``; backward manualgrad's own ``grad_weight`` ``δᵀX``, ``grad_bias`` ``Σδ``, ``grad_input``
  ``δW`` and ReLU's ``grad_plain``, called straight), torch's loss;
* ``minimal fused, norms``: that Function also forming each sample's gradient norm in its backward,
  ``‖g_n‖² = Σ_l ‖δ_n‖² (‖x_n‖² + 1)`` (two row norms per layer and their combination, nothing
  else): the floor of ``manualgrad.per_sample``'s ``.norms`` (its issue asks ≤ 1.05);
* ``hand``: ``nn.Sequential(mnn.Linear, mnn.ReLU, ...)``, ``mnn.CrossEntropyLoss``;
* ``hand, called straight``: manualgrad's own Functions of those layers and loss
  (``Linear``, ``Elementwise``, ``CrossEntropyIndices``), applied straight, without the modules'
  and functions' checks and dispatch around them: what the hand-composed step would cost if every
  call-level check were free;
* ``minimal hand``: one minimal Function per layer and for the loss (``log_softmax`` +
  ``nll_loss`` forward, ``exp`` + ``scatter_add_`` backward).

The distance between a manualgrad variant and its minimal twin is the Python manualgrad adds
around the same ops (dispatch, checks, kernel bookkeeping), which the floor shows a small step
need not pay.

Usage::

    python -m benchmarks.floor                       # 784-256-256-10 at batch 128, 2 threads
    python -m benchmarks.floor --batch 1024 --rounds 40 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import manualgrad
import manualgrad.nn as mnn
from benchmarks.bench import LR, MOMENTUM, build_hand, build_native
from manualgrad.activations import ACTIVATIONS
from manualgrad.activations import _relu_grad_plain as _relu_grad
from manualgrad.functional.activation import Elementwise
from manualgrad.functional.dense import Linear, grad_bias, grad_input, grad_weight
from manualgrad.functional.loss import CrossEntropyIndices
from manualgrad.fusion import FUSION

# The minimal Functions call manualgrad's own formulas straight (no Function, checks or kernel
# bookkeeping around them): ReLU's grad_plain (dC/da ⊙ 1[a ≠ 0], the float mask in a fresh buffer)
# and the dense grad_weight, grad_bias, grad_input.

__all__ = [
    "VARIANTS",
    "MinimalCrossEntropy",
    "MinimalLinear",
    "MinimalMLP",
    "MinimalMLPNorms",
    "MinimalReLU",
    "build",
    "interleave",
    "main",
]

VARIANTS = (
    "native",
    "fused",
    "fused, torch loss",
    "fused, no bookkeeping",
    "minimal fused",
    "minimal fused, norms",
    "hand",
    "hand, called straight",
    "minimal hand",
)
Step = Callable[[], None]


class MinimalMLP(torch.autograd.Function):
    """A whole ReLU MLP as one minimal Function: ``apply(x, w_1, b_1, ..., w_L, b_L)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor) -> Tensor:
        h, hidden = x, []
        for i in range(0, len(params), 2):
            h = F.linear(h, params[i], params[i + 1])
            if i + 2 < len(params):
                h = h.relu_()
                hidden.append(h)
        ctx.save_for_backward(x, *params[0::2], *hidden)
        return h

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        return _mlp_backward(ctx, g, norms=False)


class MinimalMLPNorms(MinimalMLP):
    """:class:`MinimalMLP` whose backward also forms each sample's gradient norm (into ``norms``)."""

    norms: Tensor | None = None

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        return _mlp_backward(ctx, g, norms=True)


def _mlp_backward(ctx: Any, g: Tensor, norms: bool) -> tuple[Tensor | None, ...]:
    """The minimal MLP's backward; with ``norms``, each sample's gradient norm too (unscaled)."""
    x, *rest = ctx.saved_tensors
    n = (len(rest) + 1) // 2
    weights, hidden = rest[:n], rest[n:]
    grads: list[Tensor | None] = [None] * (2 * n)
    d = u = None
    if norms:
        d, u = g.new_empty(n, g.shape[0]), g.new_empty(n, g.shape[0])
    for i in range(n - 1, -1, -1):
        h = x if i == 0 else hidden[i - 1]
        if d is not None and u is not None:
            torch.linalg.vector_norm(g, dim=1, out=d[i])  # ‖δ_n‖
            torch.linalg.vector_norm(h, dim=1, out=u[i])  # ‖x_n‖
        grads[2 * i], grads[2 * i + 1] = grad_weight(g, h), grad_bias(g)
        if i > 0:
            g = _relu_grad(grad_input(g, weights[i]), hidden[i - 1])
    if d is not None and u is not None:
        # ‖g_n‖ = sqrt(Σ_l ‖δ_n‖² (‖x_n‖² + 1))
        MinimalMLPNorms.norms = u.square_().add_(1.0).mul_(d.square_()).sum(0).sqrt_()
    return (None, *grads)


class MinimalLinear(torch.autograd.Function):
    """``F.linear`` with the three products as its backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        x, w = ctx.saved_tensors
        return (grad_input(g, w) if ctx.needs_input_grad[0] else None), grad_weight(g, x), grad_bias(g)


class MinimalReLU(torch.autograd.Function):
    """``relu`` with the float mask as its backward."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        a = torch.relu(z)
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors
        return _relu_grad(g, a)


class MinimalCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of class indices (none ignored): ``(exp(log p) − onehot) / N``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, target: Tensor) -> Tensor:
        logp = torch.log_softmax(x, 1)
        ctx.save_for_backward(logp, target)
        return F.nll_loss(logp, target)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        logp, target = ctx.saved_tensors
        p = logp.exp()
        p.scatter_add_(1, target.unsqueeze(1), torch.full((p.shape[0], 1), -1.0, dtype=p.dtype))
        return p.mul_(g / p.shape[0]), None


class _Apply(nn.Module):
    """A module calling a minimal Function on ``native``'s parameters (the same tensors' values)."""

    def __init__(self, fn: Callable[..., Tensor], *params: Tensor) -> None:
        super().__init__()
        self.fn, self.params = fn, nn.ParameterList(params)
        self.args = tuple(self.params)  # iterating a ParameterList costs a lookup by name per entry

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.fn(*inputs, *self.args)


def _per_layer(native: nn.Sequential, linear: Callable[..., Tensor], relu: Callable[[Tensor], Tensor]) -> nn.Sequential:
    """``native``'s layers as ``_Apply`` modules: ``linear(x, w, b)`` on copies of each Linear's
    parameters, ``relu(z)`` for each ReLU."""
    layers: list[nn.Module] = []
    for m in native:
        if isinstance(m, nn.Linear):
            layers.append(_Apply(linear, copy.deepcopy(m.weight), copy.deepcopy(m.bias)))
        else:
            layers.append(_Apply(relu))
    return nn.Sequential(*layers)


def _minimal_hand(native: nn.Sequential) -> nn.Sequential:
    return _per_layer(native, MinimalLinear.apply, MinimalReLU.apply)


def _straight_hand(native: nn.Sequential) -> tuple[nn.Sequential, Callable[[Tensor, Tensor], Tensor]]:
    act, relu = Elementwise.eager_twin, ACTIVATIONS["relu"]
    model = _per_layer(native, Linear.eager_twin.apply, lambda z: act.apply(z, relu, ()))
    loss = CrossEntropyIndices.eager_twin

    def cross_entropy(x: Tensor, y: Tensor) -> Tensor:
        return loss.apply(x, y, "mean", -100)[0]

    return model, cross_entropy


def build(variant: str, native: nn.Sequential) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor]]:
    """``variant``'s model (a copy of ``native``'s weights) and loss."""
    if variant == "native":
        return copy.deepcopy(native), nn.CrossEntropyLoss()
    if variant.startswith("fused"):
        loss = mnn.CrossEntropyLoss() if variant == "fused" else nn.CrossEntropyLoss()
        return manualgrad.convert(copy.deepcopy(native)), loss
    if variant.startswith("minimal fused"):
        params = [copy.deepcopy(p) for m in native if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
        fn = MinimalMLPNorms if variant.endswith("norms") else MinimalMLP
        return _Apply(fn.apply, *params), nn.CrossEntropyLoss()
    if variant == "hand":
        return build_hand(native), mnn.CrossEntropyLoss()
    if variant == "hand, called straight":
        return _straight_hand(native)
    if variant == "minimal hand":
        return _minimal_hand(native), MinimalCrossEntropy.apply
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def make_step(variant: str, native: nn.Sequential, x: Tensor, y: Tensor) -> tuple[Step, nn.Module]:
    """One training step of ``variant`` and its model."""
    model, loss = build(variant, native)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    bookkeeping = variant != "fused, no bookkeeping"

    def step() -> None:
        enabled, FUSION.enabled = FUSION.enabled, FUSION.enabled and bookkeeping
        try:
            opt.zero_grad()
            loss(model(x), y).backward()
            opt.step()
        finally:
            FUSION.enabled = enabled

    return step, model


def measure(sizes: Sequence[int], batch: int, rounds: int, inner: int = 5) -> dict[str, tuple[float, float]]:
    """Per variant: (median ms per step, median ratio to native), interleaved rounds."""
    native = build_native(list(sizes), "relu", torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    steps = {v: make_step(v, native, x, y)[0] for v in VARIANTS}
    return interleave(steps, rounds, inner)


def interleave(steps: dict[str, Step], rounds: int, inner: int = 1) -> dict[str, tuple[float, float]]:
    """Per side: (median ms per step, median per-round ratio to ``steps["native"]``); three warm-up
    steps each, then ``rounds`` rounds of ``inner`` steps per side, the order rotating each round."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    for _ in range(rounds):
        order = order[1:] + order[:1]
        for k in order:
            start = time.perf_counter()
            for _ in range(inner):
                steps[k]()
            times[k].append((time.perf_counter() - start) / inner * 1e3)
    base = times["native"]
    return {
        k: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base, strict=True)))
        for k, t in times.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.floor", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="784-256-256-10", help="layer sizes (ReLU between them)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads(N)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.model.split("-")]
    results = measure(sizes, args.batch, args.rounds)
    print(f"{args.model} ReLU, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds\n")
    print("| variant | ms | ratio to native |\n|---|---|---|")
    for v, (ms, ratio) in results.items():
        print(f"| {v} | {ms:.3f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
