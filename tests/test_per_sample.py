"""Per-sample gradients, norms, statistics and clipping (:mod:`manualgrad.per_sample`) against real oracles.

Every case builds a manualgrad model and its torch.nn twin with the same weights (float64):

* torch.func ``vmap(grad(functional_call))`` on the twin, a batch of one per sample, gives each
  sample's own loss gradient: ``grad_sample``, ``.norms`` and the clipped sum are checked against it;
* Opacus (``GradSampleModule``; ghost clipping with its ``DPLossFastGradientClipping``) and
  BackPACK (``BatchL2Grad``, ``SumGradSquared``, ``Variance``) themselves, on the twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import manualgrad
import manualgrad.functional as MF
import manualgrad.nn as mnn
from tests.helpers import assert_ref

DT = torch.float64
N = 7
# torch.func on the Bilinear twin: vmap has no batching rule for aten::_trilinear (slow, still exact)
# the oracles' hooks on a model whose input needs no gradient: torch (from some release after 2.6)
# warns that a full backward hook will not fire for it; what the tests compare is unaffected
pytestmark = [
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning"),
]


# ---------------------------------------------------------------------------------------------
# Models: (manualgrad model, torch.nn twin), the same weights.
# ---------------------------------------------------------------------------------------------


def _twin(mg: nn.Module, ref: nn.Module) -> tuple[nn.Module, nn.Module]:
    ref.load_state_dict(mg.state_dict())
    return mg.to(DT), ref.to(DT)


def mlp(act: str = "tanh", bias: bool = True, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """``mnn.MLP`` (the fused DenseStack) and the same torch.nn.Sequential."""
    mg = mnn.MLP(6, [8, 7], 3, activation=act, bias=bias, dropout=dropout)
    layers: list[nn.Module] = []
    for m in mg:
        if isinstance(m, mnn.Linear):
            layers.append(nn.Linear(m.in_features, m.out_features, bias=bias))
        elif isinstance(m, mnn.Dropout):
            layers.append(nn.Dropout(m.p))
        else:
            layers.append({"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}[act]())
    return _twin(mg, nn.Sequential(*layers))


def hand(act: str = "relu", bias: bool = True) -> tuple[nn.Module, nn.Module]:
    """A plain ``nn.Sequential`` of ``mnn`` layers (the lean one-layer Functions, no fusion); without
    ``bias``, the last layer has none."""
    act_mg = getattr(mnn, {"relu": "ReLU", "tanh": "Tanh"}[act])()
    mg = nn.Sequential(mnn.Linear(6, 8), act_mg, mnn.Linear(8, 3, bias=bias))
    ref = nn.Sequential(nn.Linear(6, 8), {"relu": nn.ReLU, "tanh": nn.Tanh}[act](), nn.Linear(8, 3, bias=bias))
    return _twin(mg, ref)


class BilinearNet(nn.Module):
    """``bilinear(tanh(lin(x)), x)``: a Bilinear layer after a Linear one."""

    def __init__(self, lin: type[nn.Module], bil: type[nn.Module], bias: bool = True) -> None:
        super().__init__()
        self.lin, self.bil = lin(6, 5), bil(5, 6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.bil(torch.tanh(self.lin(x)), x)


def bilinear(bias: bool = True) -> tuple[nn.Module, nn.Module]:
    return _twin(BilinearNet(mnn.Linear, mnn.Bilinear, bias), BilinearNet(nn.Linear, nn.Bilinear, bias))


def prelu(channels: int) -> tuple[nn.Module, nn.Module]:
    mg = nn.Sequential(mnn.Linear(6, 8), mnn.PReLU(channels, init=0.1), mnn.Linear(8, 3))
    ref = nn.Sequential(nn.Linear(6, 8), nn.PReLU(channels, init=0.1), nn.Linear(8, 3))
    return _twin(mg, ref)


class Tied(nn.Module):
    """One Linear used twice (its per-sample term is the sum of both uses), then a head."""

    def __init__(self, lin: type[nn.Module]) -> None:
        super().__init__()
        self.shared, self.head = lin(6, 6), lin(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


def tied() -> tuple[nn.Module, nn.Module]:
    return _twin(Tied(mnn.Linear), Tied(nn.Linear))


# ---------------------------------------------------------------------------------------------
# Losses: (loss of a batch, reduction) for manualgrad's and torch's losses.
# ---------------------------------------------------------------------------------------------

LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce-torch": F.cross_entropy,
    "ce-mg": MF.cross_entropy,
    "mse-torch": F.mse_loss,
    "mse-mg": MF.mse_loss,
}


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], tuple[nn.Module, nn.Module]]
    seq: int = 0  # 0: inputs (N, 6); T > 0: inputs (N, T, 6)
    loss: str = "ce-torch"


CASES = [
    Case("mlp-tanh", mlp),
    Case("mlp-relu", lambda: mlp("relu")),
    Case("mlp-gelu-mse", lambda: mlp("gelu"), loss="mse-mg"),
    Case("mlp-nobias", lambda: mlp("sigmoid", bias=False), loss="ce-mg"),
    Case("hand-relu", hand),
    Case("hand-tanh-mse", lambda: hand("tanh"), loss="mse-torch"),
    Case("hand-last-nobias", lambda: hand(bias=False)),
    Case("bilinear", bilinear),
    Case("bilinear-nobias", lambda: bilinear(False), loss="ce-mg"),
    Case("prelu-channels", lambda: prelu(8)),
    Case("prelu-one", lambda: prelu(1), loss="mse-mg"),
    Case("tied", tied),
    Case("mlp-seq2-gram", mlp, seq=2, loss="mse-torch"),
    Case("mlp-seq5-materialised", mlp, seq=5, loss="mse-mg"),
    Case("hand-seq3", hand, seq=3, loss="mse-torch"),
]


def batch(case: Case, n: int = N) -> tuple[Tensor, Tensor]:
    lead = (n,) if not case.seq else (n, case.seq)
    x = torch.randn(*lead, 6, dtype=DT)
    if case.loss.startswith("ce"):
        return x, torch.randint(0, 3, (n,))
    return x, torch.randn(*lead, 3, dtype=DT)


def oracle(case: Case, ref: nn.Module, x: Tensor, y: Tensor, reduction: str) -> dict[str, Tensor]:
    """Each sample's own loss gradient: torch.func on the twin, a batch of one per sample."""
    loss = LOSSES[case.loss.replace("-mg", "-torch")]
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss(functional_call(ref, p, (xi.unsqueeze(0),)), yi.unsqueeze(0), reduction=reduction)

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def ours(case: Case, reduction: str, *quantities: str) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """Build the case and run one backward of manualgrad's model inside ``per_sample(*quantities)``."""
    mg, ref = case.build()
    x, y = batch(case)
    with manualgrad.per_sample(mg, *quantities, loss_reduction=reduction):
        LOSSES[case.loss](mg(x), y, reduction=reduction).backward()
    return mg, ref, x, y


def run(case: Case, ctx: Callable[[nn.Module], object], reduction: str) -> tuple[nn.Module, nn.Module, object]:
    """Build the case, run one backward of manualgrad's model inside ``ctx(model)``."""
    mg, ref = case.build()
    x, y = batch(case)
    with ctx(mg) as c:  # type: ignore[attr-defined]
        LOSSES[case.loss](mg(x), y, reduction=reduction).backward()
    want = oracle(case, ref, x, y, reduction)
    LOSSES[case.loss.replace("-mg", "-torch")](ref(x), y, reduction=reduction).backward()
    return mg, ref, (c, want)


def flat_norms(per_param: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.flatten(1) for g in per_param.values()], 1).norm(dim=1)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_grad_sample_and_norms(case: Case, reduction: str) -> None:
    """grad_sample = torch.func's per-sample gradients; .norms their norms; p.grad = torch's gradient."""
    mg, ref, (ps, want) = run(
        case, lambda m: manualgrad.per_sample(m, "grad_sample", loss_reduction=reduction), reduction
    )
    for (name, p), q in zip(mg.named_parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad_sample, want[name])
        assert_ref(p.grad, q.grad)
    assert_ref(ps.norms, flat_norms(want))  # type: ignore[attr-defined]


@pytest.mark.parametrize("frozen", ["0.weight", "0.bias", "2.weight"])
@pytest.mark.parametrize("kind", ["per_sample", "clip_per_sample"])
def test_norms_without_frozen_parameters(frozen: str, kind: str) -> None:
    """A frozen weight or bias has no term in the norms (a layer left with its bias alone, or its weight)."""
    mg, ref = hand()
    mg.get_parameter(frozen).requires_grad_(False)
    x, y = batch(Case("hand", hand))
    ctx = manualgrad.per_sample(mg) if kind == "per_sample" else manualgrad.clip_per_sample(mg, 1e9)
    with ctx:
        F.cross_entropy(mg(x), y).backward()
    want = {k: v for k, v in oracle(Case("hand", hand), ref, x, y, "mean").items() if k != frozen}
    assert_ref(ctx.norms, flat_norms(want))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_clip_per_sample(case: Case, reduction: str) -> None:
    """p.grad = Σ_n min(1, C/‖g_n‖) g_n with torch.func's g_n; C between the smallest and largest norm."""
    mg, ref = case.build()
    x, y = batch(case)
    want = oracle(case, ref, x, y, reduction)
    norms = flat_norms(want)
    bound = float(norms.median())  # some samples clipped, some not
    with manualgrad.clip_per_sample(mg, bound, loss_reduction=reduction) as clip:
        LOSSES[case.loss](mg(x), y, reduction=reduction).backward()
    factors = (bound / (norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any() and (factors == 1).any()
    assert_ref(clip.norms, norms)
    assert_ref(clip.clip_factors, factors)
    for name, p in mg.named_parameters():
        assert_ref(p.grad, torch.einsum("n,n...->...", factors, want[name]))


# ---------------------------------------------------------------------------------------------
# Opacus and BackPACK themselves.
# ---------------------------------------------------------------------------------------------

OPACUS_CASES = [c for c in CASES if c.id in {"mlp-tanh", "mlp-nobias", "hand-relu", "prelu-channels", "mlp-seq2-gram"}]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", OPACUS_CASES, ids=lambda c: c.id)
def test_grad_sample_equals_opacus(case: Case, reduction: str) -> None:
    from opacus import GradSampleModule

    mg, ref, x, y = ours(case, reduction, "grad_sample")
    gsm = GradSampleModule(ref, loss_reduction=reduction)
    LOSSES[case.loss.replace("-mg", "-torch")](gsm(x), y, reduction=reduction).backward()
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad_sample, q.grad_sample)


def test_dropout_grad_sample_equals_opacus() -> None:
    """Dropout between layers: the same seed draws the same masks on both sides."""
    from opacus import GradSampleModule

    mg, ref = mlp("relu", dropout=0.3)
    mg.train(), ref.train()
    x, y = torch.randn(N, 6, dtype=DT), torch.randint(0, 3, (N,))
    torch.manual_seed(5)
    with manualgrad.per_sample(mg, "grad_sample") as ps:
        F.cross_entropy(mg(x), y).backward()
    gsm = GradSampleModule(ref)
    torch.manual_seed(5)
    F.cross_entropy(gsm(x), y).backward()
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad_sample, q.grad_sample)
    assert_ref(ps.norms, torch.cat([q.grad_sample.flatten(1) for q in ref.parameters()], 1).norm(dim=1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", [c for c in OPACUS_CASES if not c.seq], ids=lambda c: c.id)
def test_clip_equals_opacus_ghost_clipping(case: Case, reduction: str) -> None:
    """The clipped sum in p.grad is what Opacus's ghost clipping leaves there (before noise and scaling)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    mg, ref = case.build()
    x, y = batch(case)
    bound = 0.05
    with manualgrad.clip_per_sample(mg, bound, loss_reduction=reduction):
        LOSSES[case.loss](mg(x), y, reduction=reduction).backward()
    gsm = GradSampleModuleFastGradientClipping(
        ref, max_grad_norm=bound, use_ghost_clipping=True, loss_reduction=reduction
    )
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(ref.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=N,
        loss_reduction=reduction,
    )
    name = case.loss.replace("-mg", "-torch")
    criterion = {"ce-torch": nn.CrossEntropyLoss, "mse-torch": nn.MSELoss}[name](reduction=reduction)
    loss = DPLossFastGradientClipping(gsm, opt, criterion, loss_reduction=reduction)
    loss(gsm(x), y).backward()
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad, q.grad, rtol=1e-6)


BACKPACK_CASES = [c for c in CASES if c.id in {"mlp-tanh", "mlp-relu", "hand-relu", "mlp-nobias", "hand-tanh-mse"}]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", BACKPACK_CASES, ids=lambda c: c.id)
def test_statistics_equal_backpack(case: Case, reduction: str) -> None:
    """batch_l2, sum_grad_squared, variance = BackPACK's, with BackPACK's scaling (a mean's 1/N kept)."""
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    mg, ref, x, y = ours(case, reduction, "batch_l2", "sum_grad_squared", "variance")
    criterion = {"ce": nn.CrossEntropyLoss, "mse": nn.MSELoss}[case.loss.split("-")[0]](reduction=reduction)
    ref, criterion = extend(ref), extend(criterion)
    with backpack(BatchL2Grad(), SumGradSquared(), Variance()):
        criterion(ref(x), y).backward()
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.batch_l2, q.batch_l2)
        assert_ref(p.sum_grad_squared, q.sum_grad_squared)
        assert_ref(p.variance, q.variance, rtol=1e-6)
        assert_ref(p.grad, q.grad)


# ---------------------------------------------------------------------------------------------
# What the contexts leave: accumulation, an empty batch, the statistics of multi-row samples.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.seq or c.id in {"tied", "bilinear", "prelu-one"}], ids=lambda c: c.id
)
def test_statistics_from_grad_sample(case: Case) -> None:
    """Where BackPACK has no oracle (multi-row samples, tied, Bilinear, PReLU): the statistics from
    torch.func's per-sample gradients, with the mean's 1/N put back."""
    mg, _, (_, want) = run(case, lambda m: manualgrad.per_sample(m, "batch_l2", "sum_grad_squared", "variance"), "mean")
    for name, p in mg.named_parameters():
        b = want[name] / N
        assert_ref(p.batch_l2, b.flatten(1).square().sum(1))
        assert_ref(p.sum_grad_squared, b.square().sum(0))
        assert_ref(p.variance, b.square().mean(0) - b.mean(0).square(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["per_sample", "clip_per_sample"])
def test_existing_grad_accumulates(kind: str) -> None:
    """As autograd does, the context adds to a p.grad that is already there."""
    mg, ref = mlp()
    x, y = torch.randn(N, 6, dtype=DT), torch.randint(0, 3, (N,))
    for p in mg.parameters():
        p.grad = torch.ones_like(p)
    ctx = manualgrad.per_sample(mg) if kind == "per_sample" else manualgrad.clip_per_sample(mg, 1e9)
    with ctx:
        F.cross_entropy(mg(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    scale = 1 if kind == "per_sample" else N  # nothing clipped: Σ_n g_n, the mean's 1/N undone
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad, q.grad * scale + 1)


EMPTY_CASES = [c for c in CASES if c.id in {"mlp-tanh", "hand-relu", "bilinear", "tied", "prelu-channels", "hand-seq3"}]


@pytest.mark.parametrize("kind", ["per_sample", "clip_per_sample"])
@pytest.mark.parametrize("case", EMPTY_CASES, ids=lambda c: c.id)
def test_empty_batch(case: Case, kind: str) -> None:
    """An empty batch (a valid step under Poisson sampling): zero gradients, no norms, no samples."""
    mg, _ = case.build()
    x, y = batch(case, n=0)
    ctx = (
        manualgrad.per_sample(mg, "grad_sample", loss_reduction="sum")
        if kind == "per_sample"
        else manualgrad.clip_per_sample(mg, 1.0, loss_reduction="sum")
    )
    with ctx:
        LOSSES[case.loss](mg(x), y, reduction="sum").backward()
    assert ctx.norms.shape == (0,)
    for p in mg.parameters():
        assert p.grad is not None and not p.grad.any()
        if kind == "per_sample":
            assert p.grad_sample.shape == (0, *p.shape)


def test_float32_big_batch_clip() -> None:
    """float32, a batch of 256 through the fused stack: the clipped sum agrees with the float64 oracle."""
    mg, ref = mlp("relu")
    mg.float()
    x, y = torch.randn(256, 6, dtype=DT), torch.randint(0, 3, (256,))
    want = oracle(CASES[0], ref, x, y, "mean")
    with manualgrad.clip_per_sample(mg, 0.5):
        F.cross_entropy(mg(x.float()), y).backward()
    factors = (0.5 / (flat_norms(want) + 1e-6)).clamp(max=1.0)
    for name, p in mg.named_parameters():
        torch.testing.assert_close(
            p.grad.double(), torch.einsum("n,n...->...", factors, want[name]), rtol=1e-4, atol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, and every p.grad as it was.
# ---------------------------------------------------------------------------------------------


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = mnn.Linear(6, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) * self.scale


ENTRY_ERRORS = [
    pytest.param(
        lambda: manualgrad.per_sample(nn.Sequential(mnn.Linear(6, 4), nn.LayerNorm(4), mnn.Linear(4, 3))),
        ValueError,
        r"per_sample\(\): expected every trainable parameter to be in a manualgrad layer .* but got trainable "
        r"parameters in 1 \(LayerNorm\): weight, bias",
        id="layernorm",
    ),
    pytest.param(
        lambda: manualgrad.clip_per_sample(nn.Sequential(nn.Conv1d(1, 1, 3), mnn.Linear(4, 3)), 1.0),
        ValueError,
        r"clip_per_sample\(\): .* but got trainable parameters in 0 \(Conv1d\): weight, bias",
        id="conv",
    ),
    pytest.param(
        lambda: manualgrad.per_sample(Scaled()),
        ValueError,
        r"in the model itself \(Scaled\): scale",
        id="bare-parameter",
    ),
    pytest.param(
        lambda: manualgrad.per_sample(mnn.MLP(6, [4], 3), "hessian"),
        ValueError,
        r"per_sample\(\): expected quantities from \['batch_l2', 'grad_sample', 'sum_grad_squared', 'variance'\], "
        r"but got 'hessian'",
        id="unknown-quantity",
    ),
    pytest.param(
        lambda: manualgrad.per_sample(mnn.MLP(6, [4], 3), loss_reduction="none"),
        ValueError,
        r"expected loss_reduction to be 'mean' or 'sum', but got 'none'",
        id="reduction",
    ),
    pytest.param(
        lambda: manualgrad.clip_per_sample(mnn.MLP(6, [4], 3), 0.0),
        ValueError,
        r"clip_per_sample\(\): expected max_grad_norm to be a positive finite number, but got 0.0",
        id="norm-zero",
    ),
    pytest.param(
        lambda: manualgrad.clip_per_sample(mnn.MLP(6, [4], 3), float("nan")),
        ValueError,
        r"but got nan",
        id="norm-nan",
    ),
    pytest.param(
        lambda: manualgrad.clip_per_sample(mnn.MLP(6, [4], 3), True),
        ValueError,
        r"but got True",
        id="norm-bool",
    ),
    pytest.param(
        lambda: manualgrad.per_sample(lambda x: x),
        TypeError,
        r"per_sample\(\): expected model to be a torch.nn.Module, but got function",
        id="not-a-module",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), ENTRY_ERRORS)
def test_entry_errors(make: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match), make():  # type: ignore[attr-defined]
        pass


def test_frozen_foreign_parameters_are_fine() -> None:
    """A frozen LayerNorm has no per-sample terms to miss."""
    net = nn.Sequential(mnn.Linear(6, 4), nn.LayerNorm(4).requires_grad_(False), mnn.Linear(4, 3)).to(DT)
    with manualgrad.per_sample(net, "grad_sample"):
        net(torch.randn(N, 6, dtype=DT)).sum().backward()
    assert net[0].weight.grad_sample.shape == (N, 4, 6)


def test_nested_contexts() -> None:
    net = mnn.MLP(6, [4], 3)
    nested = r"clip_per_sample\(\): expected no other per-sample context to be open, but per_sample\(\) is"
    with manualgrad.per_sample(net), pytest.raises(RuntimeError, match=nested), manualgrad.clip_per_sample(net, 1.0):
        pass


class Regroup(nn.Module):
    """Two samples merged into one row between the layers: dim 0 is not the sample any more."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = mnn.Linear(6, 4), mnn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x).reshape(-1, 8))


class Foreign(nn.Module):
    """An mnn.Linear's weight also used by a torch op."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = mnn.Linear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) + F.linear(x, self.lin.weight)


def _weighted(out: Tensor, y: Tensor) -> Tensor:
    return mnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0], dtype=DT))(out, y)


def _twice(net: nn.Module, x: Tensor, y: Tensor) -> None:
    F.cross_entropy(net(x), y).backward()
    F.cross_entropy(net(x), y).backward()


BACKWARD_ERRORS = [
    pytest.param(
        lambda: (Regroup().to(DT), torch.randn(4, 6, dtype=DT), lambda out: out.sum().backward()),
        r"expected every layer to see the same batch dimension \(dim 0: one sample per index\), but got layer "
        r"inputs with 2 and 4 in dim 0",
        id="batch-dim-differs",
    ),
    pytest.param(
        lambda: (Foreign().to(DT), torch.randn(4, 6, dtype=DT), lambda out: out.sum().backward()),
        r"but lin.weight also received gradient from other operations",
        id="torch-op-on-parameter",
    ),
    pytest.param(
        lambda: (
            mnn.MLP(6, [4], 3).to(DT),
            torch.randn(4, 6, dtype=DT),
            lambda out: _weighted(out, torch.tensor([0, 1, 2, 0])).backward(),
        ),
        r"expected a loss that is a plain sum or mean of per-sample terms, but cross_entropy\(\) is a "
        r"class-weighted mean",
        id="class-weighted-mean",
    ),
    pytest.param(
        lambda: (
            mnn.MLP(6, [4], 3).to(DT),
            torch.randn(4, 6, dtype=DT),
            lambda out: out.sum().backward(create_graph=True),
        ),
        r"expected a first-order backward, but got one that records a graph \(create_graph=True\)",
        id="double-backward",
    ),
    pytest.param(
        lambda: (mnn.Linear(6, 3).to(DT), torch.randn(6, dtype=DT), lambda out: out.sum().backward()),
        r"expected every layer input to have a batch dimension \(dim 0\), but got an input with its feature dim "
        r"only \(one unbatched sample, shape \[features\]\)",
        id="unbatched",
    ),
]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph:UserWarning")
@pytest.mark.parametrize("kind", ["per_sample", "clip_per_sample"])
@pytest.mark.parametrize(("make", "match"), BACKWARD_ERRORS)
def test_backward_errors_leave_grads(make: Callable[[], tuple], match: str, kind: str) -> None:
    """The error names what was expected and what came; every p.grad is what it was before."""
    net, x, backward = make()
    before = {}
    for name, p in net.named_parameters():
        p.grad = torch.full_like(p, 3.0)
        before[name] = p.grad
    ctx = manualgrad.per_sample(net, "grad_sample") if kind == "per_sample" else manualgrad.clip_per_sample(net, 1.0)
    with pytest.raises(RuntimeError, match=match), ctx:
        backward(net(x))
    for name, p in net.named_parameters():
        assert p.grad is before[name] and bool((p.grad == 3.0).all()), name
        assert getattr(p, "grad_sample", None) is None
    from manualgrad.functional._common import TAP

    assert TAP.active is None


def test_second_backward_in_one_context() -> None:
    net = mnn.MLP(6, [4], 3).to(DT)
    x, y = torch.randn(4, 6, dtype=DT), torch.randint(0, 3, (4,))
    second = r"expected one backward pass inside the context, but a second one started"
    with pytest.raises(RuntimeError, match=second), manualgrad.clip_per_sample(net, 1.0):
        _twice(net, x, y)
    assert all(p.grad is None for p in net.parameters())


def test_outside_the_context_nothing_changes() -> None:
    """After the context, layers sum their gradients as before (no tap left open)."""
    mg, ref = mlp()
    x, y = torch.randn(N, 6, dtype=DT), torch.randint(0, 3, (N,))
    with manualgrad.per_sample(mg):
        F.cross_entropy(mg(x), y).backward()
    mg.zero_grad()
    F.cross_entropy(mg(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for p, q in zip(mg.parameters(), ref.parameters(), strict=True):
        assert_ref(p.grad, q.grad)


@pytest.mark.parametrize("hold", ["nothing", "tensor", "view", "numpy"])
def test_grad_sample_memory_reused_only_when_unshared(hold: str) -> None:
    """The previous p.grad_sample's memory is written again only where nothing else can see it."""
    mg, ref = mlp()
    x, y = torch.randn(N, 6, dtype=DT), torch.randint(0, 3, (N,))
    weight = mg[0].weight
    with manualgrad.per_sample(mg, "grad_sample"):
        F.cross_entropy(mg(x), y).backward()
    first = weight.grad_sample.clone()
    ptr = weight.grad_sample.data_ptr()
    held = {
        "nothing": None,
        "tensor": weight.grad_sample,
        "view": weight.grad_sample[0],
        "numpy": weight.grad_sample.numpy(),
    }[hold]
    x2 = torch.randn(N, 6, dtype=DT)
    with manualgrad.per_sample(mg, "grad_sample"):
        F.cross_entropy(mg(x2), y).backward()
    assert (weight.grad_sample.data_ptr() == ptr) == (hold == "nothing")
    if held is not None:  # what the user holds still shows the first batch
        assert_ref(torch.as_tensor(held), first if hold in ("tensor", "numpy") else first[0])
    want = oracle(CASES[0], ref, x2, y, "mean")
    assert_ref(weight.grad_sample, want["0.weight"])
