"""The fallbacks of :mod:`manualgrad._compat`: manualgrad imported on a torch without an internal it uses.

Each case removes one internal, imports manualgrad afresh (in a separate interpreter, so that this
one's manualgrad stays as it is), puts the internal back (torch's own code needs it; a torch
without it would not), and checks that the fallback was taken and that values and gradients
(backward, forward AD, vmap, double backward) are still torch's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manualgrad import _compat

ROOT = Path(__file__).resolve().parents[1]

CHECKS = """
import importlib

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as fwAD

import manualgrad.functional as MF
import manualgrad.nn as mnn
from manualgrad import _compat
from manualgrad.fusion import FUSION

torch.manual_seed(0)
close = torch.testing.assert_close
{assert_fallback}

# backward: an MLP (one dense-stack Function) and cross entropy, against torch.nn's
net = mnn.MLP(8, [16], 4, activation="gelu").double()
ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).double()
ref.load_state_dict(net.state_dict())
x, y = torch.randn(32, 8, dtype=torch.double), torch.randint(0, 4, (32,))
ours = torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters()))
theirs = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
close(ours, theirs)

# the losses that call torch's loss kernels, values and input gradients
p = torch.randn(6, 5, dtype=torch.double, requires_grad=True)
t = torch.randn(6, 5, dtype=torch.double)
prob, label = torch.rand(6, 5, dtype=torch.double), torch.randint(0, 5, (6,))
for name, args in [
    ("mse_loss", (t,)), ("l1_loss", (t,)), ("huber_loss", (t,)), ("smooth_l1_loss", (t,)),
    ("cross_entropy", (label,)), ("cross_entropy", (prob.softmax(1),)), ("nll_loss", (label,)),
]:
    for reduction in ("none", "mean", "sum"):
        a = getattr(MF, name)(p, *args, reduction=reduction)
        b = getattr(F, name)(p, *args, reduction=reduction)
        close(a, b)
        close(torch.autograd.grad(a.sum(), p), torch.autograd.grad(b.sum(), p))
close(MF.binary_cross_entropy(prob, t.sigmoid()), F.binary_cross_entropy(prob, t.sigmoid()))

# the reduction arguments: legacy size_average/reduce, a wrong reduction
import warnings
with warnings.catch_warnings(record=True) as caught:  # ours, torch's, ours, torch's
    warnings.simplefilter("always")
    close(MF.mse_loss(p, t, size_average=False), F.mse_loss(p, t, size_average=False))
    close(mnn.L1Loss(reduce=False)(p, t), torch.nn.L1Loss(reduce=False)(p, t))
said = [str(w.message) for w in caught]
assert len(said) == 4 and said[0] == said[1] and said[2] == said[3], said
for f in (MF.mse_loss, F.mse_loss):
    try:
        f(p, t, reduction="bogus")
    except ValueError as err:
        assert str(err) == "bogus is not a valid value for reduction", err
    else:
        raise AssertionError("no error for reduction='bogus'")

# forward AD, vmap, double backward
u, v = torch.randn(4, 3, dtype=torch.double), torch.randn(4, 3, dtype=torch.double)
with fwAD.dual_level():
    ours_t = fwAD.unpack_dual(MF.gelu(fwAD.make_dual(u, v))).tangent
    theirs_t = fwAD.unpack_dual(F.gelu(fwAD.make_dual(u, v))).tangent
close(ours_t, theirs_t)
close(torch.vmap(MF.softmax, in_dims=(0, None))(u, 0), torch.vmap(F.softmax, in_dims=(0, None))(u, 0))
w = u.clone().requires_grad_()
(g,) = torch.autograd.grad(MF.tanh(w).sum(), w, create_graph=True)
(ours_gg,) = torch.autograd.grad(g.sum(), w)
(g,) = torch.autograd.grad(torch.tanh(w).sum(), w, create_graph=True)
(theirs_gg,) = torch.autograd.grad(g.sum(), w)
close(ours_gg, theirs_gg)

# per-sample gradients (twice: the second writes the first's memory again where it may) and clipping
import manualgrad
from torch.func import functional_call, grad, vmap

def one(p, xi, yi):
    return F.cross_entropy(functional_call(ref, p, (xi[None],)), yi[None])

want = vmap(grad(one), in_dims=(None, 0, 0))({{k: v.detach() for k, v in ref.named_parameters()}}, x, y)
for _ in range(2):
    with manualgrad.per_sample(net, "grad_sample"):
        F.cross_entropy(net(x), y).backward()
    for k, p in net.named_parameters():
        close(p.grad_sample, want[k])
net.zero_grad()
with manualgrad.clip_per_sample(net, 0.1) as clip:
    F.cross_entropy(net(x), y).backward()
factors = (0.1 / (clip.norms + 1e-6)).clamp(max=1.0)
for k, p in net.named_parameters():
    close(p.grad, torch.einsum("n,n...->...", factors, want[k]))
print("fallback checks passed")
"""

# (how to take the internal away and put it back, what shows the fallback was taken)
FALLBACKS = {
    "maybe_current_level": (
        "torch._C._functorch",
        "maybe_current_level",
        "assert _compat.functorch_level() is not None\n"
        "with torch.no_grad():\n    assert not FUSION.usable(torch.ones(2))",
    ),
    "is_legacy_batchedtensor": (
        "torch._C._functorch",
        "is_legacy_batchedtensor",
        "with torch.no_grad():\n    assert not FUSION.usable(torch.ones(2))",
    ),
    "forward_ad._current_level": (
        "torch.autograd.forward_ad",
        "_current_level",
        "assert _compat.forward_ad_enabled()",
    ),
    "_SingleLevelFunction": (
        "torch.autograd.function",
        "_SingleLevelFunction",
        "assert _compat.CLASSIC_SETUP_CONTEXT is None and MF.DenseStack.eager_twin is MF.DenseStack.forward_ad_twin",
    ),
    "torch._C._nn": ("torch._C", "_nn", "assert _compat.nn_kernels is torch.ops.aten"),
    "_current_graph_task_id": ("torch._C", "_current_graph_task_id", "assert _compat.graph_task_id() == -1"),
    "_storage_Use_Count": (
        "torch._C",
        "_storage_Use_Count",
        "assert _compat.storage_use_count(torch.ones(1)) is None",
    ),
    "torch.nn._reduction": (
        "torch.nn",
        "_reduction",
        "assert _compat.reduction_args is not importlib.import_module('torch.nn._reduction')",
    ),
}


FALLBACKS["none removed (control)"] = (
    None,
    "",
    "assert _compat.functorch_level() is None and not _compat.forward_ad_enabled()\n"
    "assert MF.DenseStack.eager_twin is not MF.DenseStack and _compat.nn_kernels is torch._C._nn\n"
    "t = torch.ones(2)\nassert _compat.storage_use_count(t) == 1\n"
    "v = t[1:]\nassert _compat.storage_use_count(t) == 2\n"
    "with torch.no_grad():\n    assert FUSION.usable(torch.ones(2))",
)

RUNNER = """
import importlib, json, sys, traceback

results = {}
for name, (module, attr, assert_fallback) in json.loads(sys.argv[1]).items():
    for loaded in [m for m in sys.modules if m == "manualgrad" or m.startswith("manualgrad.")]:
        del sys.modules[loaded]  # a fresh manualgrad for each case
    if module is not None:
        owner = importlib.import_module(module)
        saved = getattr(owner, attr)
        delattr(owner, attr)
        submodule = f"{module}.{attr}" in sys.modules
        if submodule:  # hidden from `import` too
            sys.modules[f"{module}.{attr}"] = None
    try:
        import manualgrad
    finally:
        if module is not None:  # torch's own code needs it back
            setattr(owner, attr, saved)
            if submodule:
                sys.modules[f"{module}.{attr}"] = saved
    try:
        exec(CHECKS.format(assert_fallback=assert_fallback), {})
        results[name] = "passed"
    except Exception:
        results[name] = traceback.format_exc()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def fallback_results() -> dict[str, str]:
    """Every case of ``FALLBACKS`` in one fresh interpreter (torch imported once), manualgrad imported anew for each."""
    import json

    script = f"CHECKS = {CHECKS!r}\n{RUNNER}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(FALLBACKS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("internal", list(FALLBACKS))
def test_without_internal_results_are_torchs(internal: str, fallback_results: dict[str, str]) -> None:
    assert fallback_results[internal] == "passed", fallback_results[internal]


def test_no_eager_twin_where_apply_ignores_the_placeholder() -> None:
    """Where torch's apply stopped reading the classic-form placeholder, the probe says so."""
    assert _compat.classic_form_works(_compat.CLASSIC_SETUP_CONTEXT)
    assert not _compat.classic_form_works(staticmethod(lambda ctx, inputs, output: None))


def test_without_current_callable_the_official_call_is_kept() -> None:
    """A compiled graph without ``current_callable`` (torch's straight entry point) is called the official way."""
    from types import SimpleNamespace

    from manualgrad.fusion import _direct_call

    def official(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (args[0] + 1,)

    example = (torch.randn(3),)
    assert _direct_call(official, [SimpleNamespace()], example) is official


def test_backward_nodes_call_backward_straight_where_they_can() -> None:
    """The eager twins' nodes call ``backward`` itself (same gradients as torch's); a Function with
    ``vjp``, one with boxed gradients and a class without a node class keep torch's node."""
    import torch.nn.functional as F
    from torch.autograd.function import BackwardCFunction

    import manualgrad.functional as MF
    from manualgrad.functional.dense import Linear

    assert Linear.eager_twin._backward_cls.apply is not BackwardCFunction.apply
    assert Linear._backward_cls.apply is BackwardCFunction.apply  # the transforms' class: torch's node
    x, w = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    g = torch.randn(5, 4)
    ours = torch.autograd.grad(MF.linear(x, w), (x, w), g)
    theirs = torch.autograd.grad(F.linear(x, w), (x, w), g)
    torch.testing.assert_close(ours, theirs)

    class WithVjp(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @staticmethod
        def vjp(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            return grad * 2

    class Boxed(WithVjp):
        boxed_grads_call = True
        vjp = torch.autograd.Function.vjp

        @staticmethod
        def backward(ctx: object, grads: list[torch.Tensor]) -> torch.Tensor:
            return grads[0] * 2

    for fn in (WithVjp, Boxed):
        _compat.call_backward_straight(fn)
        assert fn._backward_cls.apply is BackwardCFunction.apply, fn.__name__
    (grad,) = torch.autograd.grad(WithVjp.apply(x).sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, 2.0))

    class NoNodeClass:
        vjp = torch.autograd.Function.vjp

    _compat.call_backward_straight(NoNodeClass)  # type: ignore[arg-type]  # nothing to patch: no error
