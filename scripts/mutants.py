"""Mutation check: the fast test suite must fail on each small deliberate error in a gradient path.

``make mutants`` (or ``python scripts/mutants.py``) copies the repository's files (``git ls-files``,
untracked ones included) to a scratch directory, applies one mutant at a time (a ``0.1 %`` error in
one formula, or a NaN semantics torch does not have), and runs the fast suite on it
(``pytest -m "not slow" -x``). A mutant is *killed* when the suite fails. Each mutant names the tests
that should kill it; those run first, alone, and the whole fast suite runs only for a mutant they do
not kill (a failure of a part of the fast suite is a failure of the fast suite). The unmutated copy
runs the same way first (the baseline): the suite must pass on it.

The last line is ``mutants killed: K/N``; the exit status is 1 if any mutant survived (a run past
``--timeout`` counts as killed and is marked ``timeout``). Per-sample gradients, their norms and
statistics, and per-sample clipping have theirs too (``per-sample-*``).

    python scripts/mutants.py              # every mutant, then exit 1 if any survived
    python scripts/mutants.py --list       # the table of mutants
    python scripts/mutants.py --only tangent-z-weight-term relu-nan
    python scripts/mutants.py --quick      # the named tests only, no whole-suite run (a survivor is "unkilled")
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REF = "tests/test_reference.py"
COMPILED = "tests/test_reference.py::test_compiled_kernels_match_torch"
ACT_NAN = "tests/test_activations.py::test_nan_and_inf_inputs_match_torch"
PLAIN = "tests/test_activations.py::test_plain_formulas_equal_grad"
DROPOUT = "tests/test_activations.py::test_dropout_draws_torch_mask_and_gradient"
LOSS = "tests/test_loss.py::test_parity"
LOSS_REF = "tests/test_loss.py::test_forward_ad_and_double_backward_match_torch"
LOSS_WEIGHT = "tests/test_loss.py::test_weighted_loss_weight_gradient"
LOSS_NAN = "tests/test_loss.py::test_nan_and_inf_inputs_match_torch"
SOFTMAX = "tests/test_softmax.py::test_parity"
SOFTMAX_REF = "tests/test_softmax.py::test_forward_ad_and_double_backward_match_torch"

PER_SAMPLE = "tests/test_per_sample.py"
PER_SAMPLE_PY = "manualgrad/per_sample.py"
DENSE_PY = "manualgrad/functional/dense.py"
ACT_PY = "manualgrad/functional/activation.py"
REGISTRY_PY = "manualgrad/activations.py"
LOSS_PY = "manualgrad/functional/loss.py"
SOFTMAX_PY = "manualgrad/functional/softmax.py"


@dataclass(frozen=True)
class Mutant:
    """One deliberate error: ``old`` (found exactly once in ``path``) replaced by ``new``."""

    id: str
    path: str
    old: str
    new: str
    target: str  # the gradient path it breaks
    first: tuple[str, ...]  # the tests expected to kill it (run first)


def m(id: str, path: str, old: str, new: str, target: str, *first: str) -> Mutant:
    return Mutant(id, path, old, new, target, first)


MUTANTS: tuple[Mutant, ...] = (
    # --- Linear: reverse mode, forward mode (weight and bias tangents), Linear.tangent ----------
    m("grad-weight", DENSE_PY, "return delta.t().mm(x)", "return delta.t().mm(x) * 1.001", "grad_weight", REF),
    m("grad-bias", DENSE_PY, "return delta.sum(-2)", "return delta.sum(-2) * 1.001", "grad_bias", REF),
    m("grad-input", DENSE_PY, "return delta.mm(weight)", "return delta.mm(weight) * 1.001", "grad_input", REF),
    m(
        "tangent-z-weight-term",
        DENSE_PY,
        "dz = x.mm(dw.t()) if dz is None else dz + x.mm(dw.t())",
        "dz = x.mm(dw.t()) if dz is None else dz + x.mm(dw.t()) * 1.001",
        "forward AD: weight tangent",
        REF,
    ),
    m(
        "tangent-z-weight-alone",
        DENSE_PY,
        "dz = x.mm(dw.t()) if dz is None else",
        "dz = x.mm(dw.t()) * 1.001 if dz is None else",
        "forward AD: weight tangent alone",
        REF,
    ),
    m(
        "tangent-z-bias-term",
        DENSE_PY,
        "dz = db.expand(x.shape[0], -1) if dz is None else dz + db",
        "dz = db.expand(x.shape[0], -1) if dz is None else dz + db * 1.001",
        "forward AD: bias tangent",
        REF,
    ),
    m(
        "linear-autocast-weight",
        DENSE_PY,
        "if x.dim() != 2 or x.dtype is not delta.dtype or weight.dtype is not delta.dtype:",
        "if x.dim() != 2 or x.dtype is not delta.dtype:",
        "Linear's backward under autocast: a float32 weight with a bf16 input",
        "tests/test_amp.py",
    ),
    m(
        "linear-tangent",
        DENSE_PY,
        "return dz.reshape(*x.shape[:-1], weight.shape[0])",
        "return (dz * 1.001).reshape(*x.shape[:-1], weight.shape[0])",
        "forward AD: Linear.tangent",
        REF,
    ),
    # --- the dense stack: tangent, double backward, compiled graphs, bf16 save mode -------------
    m(
        "dense-stack-tangent",
        DENSE_PY,
        "return (dh.reshape(ctx.out_shape), *hidden_t)",
        "return (dh.reshape(ctx.out_shape) * 1.001, *hidden_t)",
        "forward AD: DenseStack.tangent",
        REF,
    ),
    m(
        "dense-stack-tangent-activation",
        DENSE_PY,
        "dz = act.grad(dz, rows(s), *p)  # da",
        "dz = act.grad(dz, rows(s), *p) * 1.001  # da",
        "forward AD: DenseStack.tangent's activation step",
        REF,
    ),
    m(
        "dense-backward-grad-hidden-a",
        DENSE_PY,
        "g, owned = (g_a, False) if g is None else (g + g_a, True)",
        "g, owned = (g_a, False) if g is None else (g + g_a * 1.001, True)",
        "double backward: a hidden a's gradient",
        REF,
    ),
    m(
        "dense-backward-grad-hidden-z",
        DENSE_PY,
        "g, owned = (g_z, False) if g is None else (g + g_z, True)",
        "g, owned = (g_z, False) if g is None else (g + g_z * 1.001, True)",
        "double backward: a hidden z's gradient",
        REF,
    ),
    m(
        "dense-backward-weight",
        DENSE_PY,
        "grads[3 + 2 * i] = grad_weight(g, h)",
        "grads[3 + 2 * i] = grad_weight(g, h) * 1.001",
        "dense stack backward (eager and compiled): weight gradient",
        REF,
    ),
    m(
        "compiled-dense-backward-one-weight",
        DENSE_PY,
        "return tuple(g for g in grads if g is not None)",
        "return tuple(g * 1.001 if i == 3 else g for i, g in enumerate(grads) if g is not None)",
        "compiled dense backward only: the first weight gradient",
        COMPILED,
    ),
    m(
        "bf16-save-hidden",
        DENSE_PY,
        "hidden = [h.to(save_dtype) for h in hidden]",
        "hidden = [(h * 1.01).to(save_dtype) for h in hidden]",
        "bf16 save mode: hidden activations",
        REF,
    ),
    m(
        "bf16-save-output",
        DENSE_PY,
        "keep_out = None if keep_out is None else keep_out.to(save_dtype)",
        "keep_out = None if keep_out is None else (keep_out * 1.001).to(save_dtype)",
        "bf16 save mode: the saved output (compiled)",
        COMPILED,
    ),
    # --- Bilinear -----------------------------------------------------------------------------
    m(
        "bilinear-grad-weight",
        DENSE_PY,
        "gw = grad_weight(g, outer_rows(a, b)).reshape(weight.shape)",
        "gw = grad_weight(g, outer_rows(a, b)).reshape(weight.shape) * 1.001",
        "Bilinear grad_weight",
        REF,
    ),
    m(
        "bilinear-grad-input2",
        DENSE_PY,
        "g2 = (t * a.unsqueeze(2)).sum(1).reshape(x2.shape)",
        "g2 = (t * a.unsqueeze(2)).sum(1).reshape(x2.shape) * 1.001",
        "Bilinear grad_input2",
        REF,
    ),
    m(
        "bilinear-tangent-weight",
        DENSE_PY,
        "terms.append(torch.bilinear(x1, x2, w_t))",
        "terms.append(torch.bilinear(x1, x2, w_t) * 1.001)",
        "forward AD: Bilinear weight tangent",
        REF,
    ),
    # --- the activation registry: derivatives, in-place variants, NaN semantics ---------------
    m(
        "relu-grad",
        REGISTRY_PY,
        "return g * a.clamp(max=1.0).ceil_().nan_to_num_(nan=1.0)",
        "return g * a.clamp(max=1.0).ceil_().nan_to_num_(nan=1.0) * 1.001",
        "ReLU derivative",
        REF,
    ),
    m(
        "relu-grad-plain",
        REGISTRY_PY,
        "return torch.ne(a, 0.0, out=torch.empty_like(g)).mul_(g)",
        "return torch.ne(a, 0.0, out=torch.empty_like(g)).mul_(g).mul_(1.001)",
        "ReLU plain first-order derivative (hand-composed layers, the dense stack's hidden δ)",
        PLAIN,
    ),
    m(
        "gelu-grad-plain",
        REGISTRY_PY,
        "cdf = torch.mul(z, _INV_SQRT_2).erf_().add_(1.0).mul_(0.5)  # Φ(z)",
        "cdf = torch.mul(z, _INV_SQRT_2).erf_().add_(1.0).mul_(0.5005)  # Φ(z)",
        "GELU plain first-order derivative (hand-composed and eager stacks)",
        PLAIN,
    ),
    m(
        "relu-nan-plain",
        REGISTRY_PY,
        "return torch.ne(a, 0.0, out=torch.empty_like(g)).mul_(g)",
        "return torch.gt(a, 0.0, out=torch.empty_like(g)).mul_(g)",
        "ReLU plain derivative at a NaN input (torch passes dC/da)",
        ACT_NAN,
    ),
    m(
        "relu-nan",
        REGISTRY_PY,
        "return g * a.clamp(max=1.0).ceil_().nan_to_num_(nan=1.0)",
        "return g * a.clamp(max=1.0).ceil_().nan_to_num_(nan=0.0)",
        "ReLU at a NaN input (torch passes dC/da)",
        ACT_NAN,
    ),
    m(
        "sigmoid-grad",
        REGISTRY_PY,
        "return torch.addcmul(ga, ga, a, value=-1.0)",
        "return torch.addcmul(ga, ga, a, value=-1.001)",
        "sigmoid derivative",
        REF,
    ),
    m(
        "sigmoid-grad-inplace",
        REGISTRY_PY,
        "return g.mul_(a).addcmul_(g, a, value=-1.0)",
        "return g.mul_(a).addcmul_(g, a, value=-1.001)",
        "sigmoid in-place derivative",
        REF,
    ),
    m(
        "sigmoid-grad-plain",
        REGISTRY_PY,
        "return ga.addcmul_(ga, a, value=-1.0)",
        "return ga.addcmul_(ga, a, value=-1.001)",
        "sigmoid plain first-order derivative",
        PLAIN,
    ),
    m(
        "tanh-grad",
        REGISTRY_PY,
        "return torch.addcmul(g, g * a, a, value=-1.0)",
        "return torch.addcmul(g, g * a, a, value=-1.001)",
        "tanh derivative",
        REF,
    ),
    m(
        "tanh-grad-inplace",
        REGISTRY_PY,
        "return g.addcmul_(g * a, a, value=-1.0)",
        "return g.addcmul_(g * a, a, value=-1.001)",
        "tanh in-place derivative",
        REF,
    ),
    m(
        "tanh-grad-plain",
        REGISTRY_PY,
        "return torch.addcmul(g, ga, a, value=-1.0, out=ga)",
        "return torch.addcmul(g, ga, a, value=-1.001, out=ga)",
        "tanh plain first-order derivative",
        PLAIN,
    ),
    m(
        "gelu-erf-grad",
        REGISTRY_PY,
        "z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI)",
        "z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI * 1.001)",
        "GELU derivative",
        REF,
    ),
    m(
        "gelu-tanh-grad",
        REGISTRY_PY,
        "(1.0 + 3 * 0.044715 * z2)",
        "(1.0 + 3 * 0.0447 * z2)",
        "GELU (tanh) derivative",
        REF,
    ),
    m(
        "leaky-relu-grad",
        REGISTRY_PY,
        "return torch.where(z > 0, g, g * slope)",
        "return torch.where(z > 0, g, g * slope * 1.001)",
        "leaky-ReLU derivative",
        REF,
    ),
    m(
        "elu-grad",
        REGISTRY_PY,
        "g * (scale * alpha * input_scale) * torch.exp(z * input_scale)",
        "g * (scale * alpha * input_scale * 1.001) * torch.exp(z * input_scale)",
        "ELU/SELU/CELU derivative",
        REF,
    ),
    m(
        "softplus-grad",
        REGISTRY_PY,
        "return torch.where(bz > threshold, g, g * torch.sigmoid(bz))",
        "return torch.where(bz > threshold, g, g * torch.sigmoid(bz * 1.001))",
        "softplus derivative",
        REF,
    ),
    m(
        "silu-grad",
        REGISTRY_PY,
        "return g * s * (1.0 + z * (1.0 - s))",
        "return g * s * (1.0 + z * (1.001 - s))",
        "SiLU derivative",
        REF,
    ),
    m(
        "hardtanh-kink",
        REGISTRY_PY,
        "return torch.where((a > lo) & (a < hi), g, 0.0)",
        "return torch.where((a >= lo) & (a < hi), g, 0.0)",
        "hardtanh/relu6 derivative at the clamp",
        REF,
    ),
    m(
        "hardswish-nan",
        REGISTRY_PY,
        "inner = torch.where(z >= 3.0, g, g * (z / 3.0 + 0.5))",
        "inner = torch.where(z < 3.0, g * (z / 3.0 + 0.5), g)",
        "hardswish at a NaN input (torch gives NaN)",
        ACT_NAN,
    ),
    m(
        "compiled-activation-kernel",
        REGISTRY_PY,
        "return g.copy_(out) if into else out",
        "return g.copy_(out * 1.001) if into else out",
        "compiled activation derivative written into δ only",
        COMPILED,
    ),
    # --- Elementwise Functions, PReLU, Dropout ------------------------------------------------
    m(
        "elementwise-inplace-grad-z",
        ACT_PY,
        "grad = grad_z if grad is None else grad + grad_z",
        "grad = grad_z if grad is None else grad + grad_z * 1.001",
        "double backward: in-place activation's saved z",
        REF,
    ),
    m(
        "elementwise-tangent",
        ACT_PY,
        "return ctx.act.grad(x_t, saved, *ctx.params)  # diagonal",
        "return ctx.act.grad(x_t, saved, *ctx.params) * 1.001  # diagonal",
        "forward AD: activations",
        REF,
    ),
    m(
        "prelu-grad-weight",
        ACT_PY,
        "contrib = torch.where(x > 0, 0.0, grad_output * x)",
        "contrib = torch.where(x > 0, 0.0, grad_output * x * 1.001)",
        "PReLU weight gradient",
        REF,
    ),
    m(
        "prelu-tangent-weight",
        ACT_PY,
        "out = out + torch.where(x > 0, 0.0, _per_channel(w_t, x) * x)",
        "out = out + torch.where(x > 0, 0.0, _per_channel(w_t, x) * x * 1.001)",
        "forward AD: PReLU weight tangent",
        REF,
    ),
    m(
        "dropout-grad",
        ACT_PY,
        "return grad_output * noise, None, None",
        "return grad_output * noise * 1.001, None, None",
        "Dropout mask scaling",
        DROPOUT,
    ),
    # --- losses -------------------------------------------------------------------------------
    m(
        "weighted-mean-correction",
        LOSS_PY,
        "grad_w = grad_w - G * out.to(dtype)",
        "grad_w = grad_w",
        "weighted mse/l1 mean: the weight gradient's - G·L term",
        LOSS_WEIGHT,
    ),
    m(
        "weighted-loss-grad-weight",
        LOSS_PY,
        "grad_w = _sum_to(G * ell, w.shape)",
        "grad_w = _sum_to(G * ell * 1.001, w.shape)",
        "weighted losses: weight gradient",
        LOSS_WEIGHT,
    ),
    m(
        "weighted-l1-ell",
        LOSS_PY,
        "return d.abs()",
        "return d.abs() * 1.001",
        "weighted l1: ℓ in the weight gradient",
        LOSS_WEIGHT,
    ),
    m(
        "weighted-huber-ell",
        LOSS_PY,
        "0.5 * d * d, param * (d.abs() - 0.5 * param))",
        "0.5 * d * d, param * (d.abs() - 0.501 * param))",
        "weighted huber: ℓ in the weight gradient",
        LOSS_WEIGHT,
    ),
    m(
        "weighted-mean-tangent",
        LOSS_PY,
        "total = total - out * w_t.sum()",
        "total = total - out * w_t.sum() * 1.001",
        "forward AD: weighted mean's weight tangent",
        LOSS_WEIGHT,
    ),
    m("mse-grad", LOSS_PY, "dx = 2 * d", "dx = 2.002 * d", "mse derivative", LOSS),
    m(
        "huber-grad",
        LOSS_PY,
        "dx = d.clamp(-param, param)",
        "dx = d.clamp(-param, param * 1.001)",
        "huber derivative",
        LOSS,
    ),
    m(
        "smooth-l1-grad",
        LOSS_PY,
        "dx = (d / param).clamp(-1, 1)",
        "dx = (d / param).clamp(-1, 1.001)",
        "smooth-l1 derivative",
        LOSS,
    ),
    m(
        "bce-grad",
        LOSS_PY,
        "dx = (x - t) / (x * (1 - x)).clamp_min(_BCE_EPS)",
        "dx = (x - t) * 1.001 / (x * (1 - x)).clamp_min(_BCE_EPS)",
        "BCE derivative",
        LOSS,
    ),
    m(
        "bce-logits-grad",
        LOSS_PY,
        "return torch.sigmoid(x) - t, -x",
        "return torch.sigmoid(x) * 1.001 - t, -x",
        "BCE-with-logits derivative",
        LOSS,
    ),
    m(
        "bce-logits-pos-weight-nan",
        LOSS_PY,
        "dx = (pt + 1 - t) * torch.sigmoid(x) - pt",
        "dx = torch.sigmoid(x) * (1 + (pw - 1) * t) - pt",
        "BCE-with-logits pos_weight at an infinite target (torch: NaN)",
        LOSS_NAN,
    ),
    m(
        "kl-target-grad",
        LOSS_PY,
        "dt = torch.log(t) + t / t - x",
        "dt = torch.log(t) * 1.001 + t / t - x",
        "KL target derivative",
        LOSS,
    ),
    m(
        "pointwise-tangent",
        LOSS_PY,
        "d_ell = d_ell + dx * x_t",
        "d_ell = d_ell + dx * x_t * 1.001",
        "forward AD: pointwise losses",
        LOSS_REF,
    ),
    m(
        "ce-index-grad",
        LOSS_PY,
        "return p.mul_(G if counted is None else (counted * G).unsqueeze(1))",
        "return p.mul_(G * 1.001 if counted is None else (counted * G).unsqueeze(1))",
        "cross entropy (class indices; the eager scatter_add form)",
        LOSS,
    ),
    m(
        "ce-index-grad-ignored",
        LOSS_PY,
        "return p.mul_(G if counted is None else (counted * G).unsqueeze(1))",
        "return p.mul_(G if counted is None else (counted * G * 1.001).unsqueeze(1))",
        "cross entropy (class indices, some ignored; the eager form)",
        LOSS,
    ),
    m(
        "ce-none-ignored",
        LOSS_PY,
        "return int(target.min()) >= 0",
        "return True",
        "cross entropy (class indices): whether any target is ignored",
        LOSS,
    ),
    m(
        "ce-eager-softmax",
        LOSS_PY,
        "p = logp.exp()  # softmax(x) = exp(log_softmax(x))",
        "p = logp.exp().mul_(1.001)  # softmax(x) = exp(log_softmax(x))",
        "cross entropy's eager softmax",
        LOSS,
    ),
    m(
        "ce-index-grad-onehot",
        LOSS_PY,
        "return G.unsqueeze(cd) * (p - onehot.to(p.dtype))",
        "return G.unsqueeze(cd) * (p - onehot.to(p.dtype)) * 1.001",
        "cross entropy (class indices; the onehot form: compiled kernel, grad mode, transforms, CUDA)",
        LOSS,
    ),
    m(
        "ce-grad",
        LOSS_PY,
        "grad_x = G * (p * a.sum(cd, keepdim=True) - a)",
        "grad_x = G * (p * a.sum(cd, keepdim=True) * 1.001 - a)",
        "cross entropy (weights, smoothing, probabilities)",
        LOSS,
    ),
    m(
        "ce-tangent",
        LOSS_PY,
        "return x_t - (p * x_t).sum(cd, keepdim=True)",
        "return x_t - (p * x_t).sum(cd, keepdim=True) * 1.001",
        "forward AD: cross entropy (the log-probabilities' tangent, both Functions)",
        LOSS_REF,
    ),
    m(
        "ce-index-tangent",
        LOSS_PY,
        "loss_t = (_index_grad(unit, p, target, ctx.red, ctx.ignore_index) * x_t).sum()",
        "loss_t = (_index_grad(unit, p, target, ctx.red, ctx.ignore_index) * x_t).sum() * 1.001",
        "forward AD: cross entropy (class indices)",
        LOSS_REF,
    ),
    m(
        "nll-grad",
        LOSS_PY,
        "c = NLLLoss._coefficient(ctx, target, w, grad_output.dtype) * grad_output",
        "c = NLLLoss._coefficient(ctx, target, w, grad_output.dtype) * grad_output * 1.001",
        "NLL derivative",
        LOSS,
    ),
    # --- the softmax family -------------------------------------------------------------------
    m(
        "softmax-grad",
        SOFTMAX_PY,
        "return y * (g - (g * y).sum(dim, keepdim=True))",
        "return y * (g - (g * y).sum(dim, keepdim=True) * 1.001)",
        "softmax backward (and tangent)",
        SOFTMAX,
    ),
    m(
        "log-softmax-grad",
        SOFTMAX_PY,
        "return g - y.exp() * g.sum(dim, keepdim=True)",
        "return g - y.exp() * g.sum(dim, keepdim=True) * 1.001",
        "log_softmax backward",
        SOFTMAX,
    ),
    m(
        "log-softmax-tangent",
        SOFTMAX_PY,
        "return x_t - (y.exp() * x_t).sum(ctx.dim, keepdim=True)",
        "return x_t - (y.exp() * x_t).sum(ctx.dim, keepdim=True) * 1.001",
        "forward AD: log_softmax",
        SOFTMAX_REF,
    ),
    m(
        "glu-grad",
        SOFTMAX_PY,
        "grad_b = grad_a * a * (1 - s)",
        "grad_b = grad_a * a * (1.001 - s)",
        "GLU backward",
        SOFTMAX,
    ),
    # --- per-sample gradients, norms, statistics and clipping ----------------------------------
    m(
        "per-sample-grad-weight",
        DENSE_PY,
        "return delta.mT.matmul(x) if out is None else torch.matmul(delta.mT, x, out=out)",
        "return delta.mT.matmul(x) if out is None else torch.matmul(delta.mT, x * 1.001, out=out)",
        "grad_weight per sample (grad_sample)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-norm-one-row",
        PER_SAMPLE_PY,
        "sq = sq * _sq_norms(f)",
        "sq = sq * _sq_norms(f) * 1.001",
        "‖b_n‖² = ‖δ_n‖²‖x_n‖² (norms, clipping)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-norm-layers",
        PER_SAMPLE_PY,
        "return u.mul_(d.square_()).sum(0)",
        "return u.mul_(d.square_()).sum(0) * 1.001",
        "Σ ‖δ_n‖²(‖x_n‖² + 1) over one-row layers (norms, clipping)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-norm-gram",
        PER_SAMPLE_PY,
        "gram = gram * f.matmul(f.mT)",
        "gram = gram * f.matmul(f.mT) * 1.001",
        "the Gram form of multi-row samples' norms",
        PER_SAMPLE,
    ),
    m(
        "per-sample-norm-materialised",
        PER_SAMPLE_PY,
        "return _sq_norms(self.each().flatten(1))",
        "return _sq_norms(self.each().flatten(1)) * 1.001",
        "norms from b_n itself (multi-row samples where the Gram form costs more, biases)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-clip-factor",
        PER_SAMPLE_PY,
        "(self.max_grad_norm / (self.norms + 1e-6)).clamp_(max=1.0)",
        "(self.max_grad_norm / (self.norms + 1e-6)).clamp_(max=1.001)",
        "clip factors min(1, C/‖g_n‖)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-weighted-rows",
        PER_SAMPLE_PY,
        "w = in_dtype(weights, self.flat.dtype)",
        "w = in_dtype(weights, self.flat.dtype) * 1.001",
        "the clipped sum (s c ⊙ δ)ᵀX",
        PER_SAMPLE,
    ),
    m(
        "per-sample-sum-sq",
        PER_SAMPLE_PY,
        "squares = tuple(f.square() for f in self.flat_factors)",
        "squares = tuple(f.square() * 1.001 for f in self.flat_factors)",
        "sum_grad_squared = (δ⊙δ)ᵀ(X⊙X)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-variance",
        PER_SAMPLE_PY,
        "return b.sum_sq() / n - (b.total() / n).square()",
        "return b.sum_sq() / n - (b.total() / n).square() * 1.001",
        "variance",
        PER_SAMPLE,
    ),
    m(
        "per-sample-mean-scale",
        PER_SAMPLE_PY,
        'scale = float(n) if self.loss_reduction == "mean" else 1.0',
        'scale = float(n) * 1.001 if self.loss_reduction == "mean" else 1.0',
        "undoing a mean's 1/N (grad_sample, norms)",
        PER_SAMPLE,
    ),
    m(
        "per-sample-prelu",
        ACT_PY,
        "kept = (0,) if weight.numel() == 1 else (0, 1)",
        "kept = (0,)",
        "PReLU's per-channel slopes per sample",
        PER_SAMPLE,
    ),
    m(
        "per-sample-reuse-shared",
        PER_SAMPLE_PY,
        "if sys.getrefcount(old) == 3 and storage_use_count(old) == 1:",
        "if sys.getrefcount(old) <= 4:",
        "grad_sample memory written again while a user still holds it",
        PER_SAMPLE,
    ),
)


# ---------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------

PYTEST = ("-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider")


def repo_files(root: Path) -> list[str]:
    """The repository's files: tracked ones and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return [f for f in out.decode().split("\0") if f and (root / f).is_file()]


def copy_repo(root: Path, files: Sequence[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def apply(mutant: Mutant, copy: Path) -> str:
    """Write the mutant into ``copy``; returns the original text (it must hold ``old`` exactly once)."""
    path = copy / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.id}: {mutant.old!r} found {count} times in {mutant.path} (need exactly 1)")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc between a mutant and the original
    # the scratch copy has no data/: the repository's own (or $MANUALGRAD_DATA's) MNIST files
    env.setdefault("MANUALGRAD_DATA", str(ROOT / "data"))
    return env


def pytest(copy: Path, args: Sequence[str], timeout: float) -> tuple[bool | None, str]:
    """Run pytest in ``copy``: (passed, or None on timeout; the first failing test or the error)."""
    try:
        proc = subprocess.run(
            [sys.executable, *PYTEST, *args],
            cwd=copy,
            env=environment(copy),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    if proc.returncode == 0:
        return True, ""
    lines = (proc.stdout + proc.stderr).splitlines()
    failed = [
        ln.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ")
        for ln in lines
        if ln.startswith(("FAILED", "ERROR"))
    ]
    return False, failed[0] if failed else (lines[-1] if lines else f"exit status {proc.returncode}")


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | unkilled (--quick) | timeout
    by: str
    seconds: float


def run_one(mutant: Mutant, copy: Path, workers: int, quick: bool, timeout: float) -> Result:
    start = time.perf_counter()
    original = apply(mutant, copy)
    try:
        passed, by = pytest(copy, ["-p", "no:xdist", *mutant.first], timeout)
        if passed and not quick:
            passed, by = pytest(copy, ["-n", str(workers)] if workers > 1 else ["-p", "no:xdist"], timeout)
    finally:
        (copy / mutant.path).write_text(original)
    status = "timeout" if passed is None else "killed" if not passed else "unkilled" if quick else "survived"
    return Result(mutant, status, by, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--quick", action="store_true", help="the tests each mutant names only (no whole-suite run)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tried at once (each its own copy)")
    parser.add_argument("-n", "--workers", type=int, default=2, help="pytest-xdist workers for whole-suite runs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run")
    args = parser.parse_args(argv)

    ids = [mu.id for mu in MUTANTS]
    assert len(set(ids)) == len(ids), "duplicate mutant ids"
    if args.list:
        for mu in MUTANTS:
            print(f"{mu.id:36} {mu.path:38} {mu.target}")
        return 0
    chosen = [mu for mu in MUTANTS if not args.only or mu.id in args.only]
    unknown = set(args.only or ()) - set(ids)
    if unknown:
        raise SystemExit(f"unknown mutants: {sorted(unknown)}")

    files = repo_files(ROOT)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="manualgrad-mutants-") as tmp:
        copies = [Path(tmp) / f"copy{j}" for j in range(max(1, args.jobs))]
        for copy in copies:
            copy_repo(ROOT, files, copy)
        for mu in chosen:  # every mutant applies cleanly before anything runs
            (copies[0] / mu.path).write_text(apply(mu, copies[0]))
        if not args.no_baseline:
            first = sorted({t for mu in chosen for t in mu.first})
            passed, by = pytest(copies[0], ["-p", "no:xdist", *first], args.timeout)
            if passed and not args.quick:
                passed, by = pytest(copies[0], ["-n", str(args.workers)], args.timeout)
            if not passed:
                print(f"baseline: the unmutated suite fails ({by}); no mutant can be judged", flush=True)
                return 2
            print(f"baseline: the unmutated suite passes ({time.perf_counter() - start:.0f} s)", flush=True)

        def task(j: int) -> list[Result]:
            out = []
            for mu in chosen[j :: len(copies)]:
                r = run_one(mu, copies[j], args.workers, args.quick, args.timeout)
                print(f"  {r.mutant.id:36} {r.status:9} {r.seconds:6.1f} s  {r.by}", flush=True)
                out.append(r)
            return out

        with ThreadPoolExecutor(len(copies)) as pool:
            results = [r for rs in pool.map(task, range(len(copies))) for r in rs]

    results.sort(key=lambda r: ids.index(r.mutant.id))
    print()
    print(f"{'mutant':36} {'status':9} {'target':58} killed by")
    for r in results:
        print(f"{r.mutant.id:36} {r.status:9} {r.mutant.target:58} {r.by}")
    killed = sum(r.status in ("killed", "timeout") for r in results)
    print(f"\n{len(results)} mutants in {time.perf_counter() - start:.0f} s")
    print(f"mutants killed: {killed}/{len(results)}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
