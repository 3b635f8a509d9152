"""DP-SGD in the MNIST app (train/privacy.py): the step against Opacus, the sampler, exact resume with ε,
the errors, and the smoke config end to end."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manualgrad.nn as mnn
from tests.test_train import _StopAfter, _trainer
from train import model as model_module
from train.data import MNISTDataModule
from train.mnist import cli_main
from train.model import MNISTClassifier
from train.privacy import DPSGD, PoissonBatchSampler, Privacy

REPO = Path(__file__).resolve().parent.parent
PRIVATE = dict(target_epsilon=3.0, max_grad_norm=0.5)


# ---------------------------------------------------------------------------------------------
# The step: manualgrad's clipping + Opacus's noise and scaling = Opacus's ghost clipping.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [37, 0], ids=["batch-37", "empty-batch"])
def test_dp_step_with_noise_0_equals_opacus_ghost_clipping(batch: int) -> None:
    """One DP-SGD step (SGD with momentum, expected batch 32, C = 0.05) on manualgrad's MLP and on its
    torch.nn twin through Opacus's own ghost clipping: the same parameters after the step."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    torch.manual_seed(3)
    ours = mnn.MLP(20, [16, 12], 5, activation="tanh").double()
    twin = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5)).double()
    twin.load_state_dict(ours.state_dict())
    x, y = torch.randn(batch, 20, dtype=torch.double), torch.randint(0, 5, (batch,))
    bound, expected = 0.05, 32

    dp = DPSGD(Privacy(target_epsilon=None, noise_multiplier=0.0, max_grad_norm=bound), 1000, expected, 10)
    opt = dp.optimizer(torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9))
    opt.zero_grad()
    dp.backward(ours, mnn.CrossEntropyLoss()(ours(x), y))
    opt.step()

    gsm = GradSampleModuleFastGradientClipping(twin, max_grad_norm=bound, use_ghost_clipping=True)
    theirs = DPOptimizerFastGradientClipping(
        torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9),
        noise_multiplier=0.0,
        max_grad_norm=bound,
        expected_batch_size=expected,
    )
    theirs.zero_grad()
    with pytest.warns(UserWarning, match="Full backward hook"):
        DPLossFastGradientClipping(gsm, theirs, nn.CrossEntropyLoss())(gsm(x), y).backward()
    theirs.step()

    for p, q in zip(ours.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert dp.steps_taken == 1 and dp.accountant.history == [(0.0, expected / 1000, 1)]


def test_noise_has_the_chosen_std() -> None:
    """With σ > 0 and no gradient (an empty batch), the update is the noise alone: std σC/B per coordinate."""
    torch.manual_seed(0)
    net = mnn.Linear(200, 100)
    dp = DPSGD(Privacy(target_epsilon=None, noise_multiplier=2.0, max_grad_norm=0.5), 10_000, 50, 10)
    before = net.weight.detach().clone()
    opt = dp.optimizer(torch.optim.SGD(net.parameters(), lr=1.0))
    opt.zero_grad()
    dp.backward(net, net(torch.randn(0, 200)).sum())
    opt.step()
    step = (net.weight.detach() - before).flatten()
    assert abs(float(step.std()) / (2.0 * 0.5 / 50) - 1) < 0.02  # 20,000 draws: 1 % standard error
    assert abs(float(step.mean())) < 0.02 * 2.0 * 0.5 / 50 * 4


# ---------------------------------------------------------------------------------------------
# Poisson sampling.
# ---------------------------------------------------------------------------------------------


def test_poisson_batch_sizes_are_binomial() -> None:
    """2,000 batches of N = 1,000, q = 0.05 (seeded): sizes pass a chi-square test against Binomial(N, q)
    (bins with ≥ 5 expected), mean and variance within 4 standard errors; the draws are a function of
    (seed, epoch) only."""
    n, q = 1000, 0.05
    sampler = PoissonBatchSampler(n, q, seed=11)
    assert len(sampler) == 20  # int(1/q) batches an epoch, Opacus's default
    sizes = []
    for epoch in range(100):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        for b in batches:
            assert len(set(b)) == len(b) and all(0 <= i < n for i in b)
        sizes += [len(b) for b in batches]
    sampler.set_epoch(3)
    again = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == again
    counts = torch.bincount(torch.tensor(sizes), minlength=n + 1).double()
    k = torch.arange(n + 1, dtype=torch.double)
    log_pmf = (
        torch.lgamma(torch.tensor(n + 1.0))
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
        + k * math.log(q)
        + (n - k) * math.log(1 - q)
    )
    expected = log_pmf.exp() * len(sizes)
    keep = expected >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof), f"chi-square {chi2:.1f} with {dof} degrees of freedom"
    sizes_t = torch.tensor(sizes, dtype=torch.double)
    mean, var = n * q, n * q * (1 - q)
    assert abs(float(sizes_t.mean()) - mean) < 4 * math.sqrt(var / len(sizes))
    assert abs(float(sizes_t.var()) / var - 1) < 4 * math.sqrt(2 / len(sizes))


def test_empty_batches_are_drawn_and_are_steps() -> None:
    """N = 10, q = 0.05: most batches are empty; every one is a batch of the epoch."""
    sampler = PoissonBatchSampler(10, 0.05, seed=0)
    batches = list(sampler)
    assert len(batches) == 20 and sum(len(b) == 0 for b in batches) >= 5


# ---------------------------------------------------------------------------------------------
# The app: exact resume including ε, the privacy statement, the errors.
# ---------------------------------------------------------------------------------------------

HP: dict[str, Any] = dict(
    hidden_sizes=[32],
    activation="relu",
    dropout=0.1,
    optimizer="sgd",
    lr=1.0,
    scheduler="cosine",
    seed=1,
    ema_decay=0.9,
    init="he",
)
RUN: dict[str, Any] = dict(max_epochs=3, limit_train_batches=6, limit_val_batches=1)


def _fit(root: Path, data_root: Path, stop: int | None = None, ckpt: str | None = None) -> tuple[pl.Trainer, Any]:
    pl.seed_everything(7)
    model = MNISTClassifier(**HP, privacy=Privacy(**PRIVATE))
    dm = MNISTDataModule(
        data_dir=str(data_root), batch_size=256, shift_augment=1, augment_multiplicity=2, poisson_sampling=True
    )
    trainer = _trainer(root, callbacks=[_StopAfter(stop)] if stop else [], **RUN)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model


def test_resume_is_exact_including_epsilon(data_root: Path, tmp_path: Path) -> None:
    """3 epochs straight vs. 2 epochs + resume from last.ckpt (dropout, two shifted copies per example,
    a weight average): identical weights and average, accountant history and ε."""
    _, straight = _fit(tmp_path / "straight", data_root)
    _, interrupted = _fit(tmp_path / "resumed", data_root, stop=2)
    assert interrupted.dp.steps_taken == 12
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["privacy"]["epsilon"] == pytest.approx(interrupted.dp.epsilon())
    _, resumed = _fit(tmp_path / "resumed", data_root, ckpt=str(last))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert resumed.dp.accountant.history == straight.dp.accountant.history
    assert resumed.dp.steps_taken == 18
    assert resumed.dp.epsilon() == straight.dp.epsilon() > saved["privacy"]["epsilon"]
    assert resumed.privacy_statement() == straight.privacy_statement()


def test_smoke_config_prints_privacy_then_accuracy(data_root: Path, tmp_path: Path, capsys: Any) -> None:
    """``configs/dp_smoke.yaml`` (CI's DP run): ε ≤ the target, logged per epoch and in the checkpoint;
    the last two lines are the privacy statement and the test accuracy."""
    args = ["fit", "--config", str(REPO / "configs" / "dp_smoke.yaml"), f"--trainer.default_root_dir={tmp_path}"]
    cli = cli_main([*args, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("Privacy: ε = ") and "at δ = 1e-05 (PRV accountant, σ = " in lines[-2]
    assert lines[-1].startswith("Test accuracy: ")
    epsilon = float(lines[-2].split("ε = ")[1].split()[0])
    assert 2.9 < epsilon <= 3.0
    metrics = (Path(cli.trainer.logger.log_dir) / "metrics.csv").read_text()  # type: ignore[union-attr]
    assert "epsilon" in metrics.splitlines()[0]
    ckpt = torch.load(Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt", weights_only=False)  # type: ignore[union-attr]
    assert ckpt["privacy"]["epsilon"] == pytest.approx(epsilon, abs=5e-4)
    # the last checkpoint is the final state (all the steps taken), whether or not its epoch was the best
    assert ckpt["global_step"] == cli.trainer.global_step == 16 and lines[-2].endswith("16 steps)")


class _Foreign(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.norm = mnn.Linear(784, 10), nn.LayerNorm(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_grad_norm=0.0), r"privacy: expected max_grad_norm > 0, but got 0.0"),
        (dict(max_grad_norm=-1.0), r"privacy: expected max_grad_norm > 0, but got -1.0"),
        (dict(noise_multiplier=1.0), r"expected exactly one of target_epsilon and noise_multiplier"),
        (dict(target_epsilon=None), r"expected exactly one of target_epsilon and noise_multiplier"),
        (dict(target_epsilon=-2.0), r"expected target_epsilon > 0, but got -2.0"),
        (dict(delta=0.0), r"expected 0 < delta < 1, but got 0.0"),
        (dict(accountant="gdp"), r"expected accountant 'prv' or 'rdp', but got 'gdp'"),
    ],
    ids=["norm-zero", "norm-negative", "both", "neither", "epsilon-negative", "delta-zero", "accountant"],
)
def test_privacy_option_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Privacy(**kwargs)


def test_native_backend_with_privacy() -> None:
    with pytest.raises(ValueError, match=r"privacy: expected backend='manualgrad' .* but got backend='native'"):
        MNISTClassifier(backend="native", privacy=Privacy())


def test_parameters_outside_manualgrad_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "build_network", lambda *a, **k: (_Foreign(), nn.CrossEntropyLoss()))
    with pytest.raises(
        ValueError, match=r"in a manualgrad layer .* but got trainable parameters in norm \(LayerNorm\)"
    ):
        MNISTClassifier(privacy=Privacy())


@pytest.mark.parametrize(
    ("privacy", "data", "match"),
    [
        (
            dict(target_epsilon=0.001),
            dict(poisson_sampling=True),
            r"privacy: target_epsilon=0.001 is unreachable at delta=1e-05 with sample rate 0.004655 over 18 steps",
        ),
        (dict(delta=1e-4), dict(poisson_sampling=True), r"privacy: expected delta < 1/N = 1.82e-05 \(N = 55000"),
        (dict(), dict(poisson_sampling=False), r"privacy: expected Poisson-sampled batches"),
    ],
    ids=["unreachable-epsilon", "delta-too-large", "not-poisson"],
)
def test_errors_before_training_starts(
    privacy: dict[str, Any], data: dict[str, Any], match: str, data_root: Path, tmp_path: Path
) -> None:
    model = MNISTClassifier(**HP, privacy=Privacy(**{**PRIVATE, **privacy}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=256, **data)
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, **RUN).fit(model, datamodule=dm)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("config", "size"), [("dp.yaml", 3969), ("dp_pixels.yaml", 784)])
def test_dp_config_parses(config: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``configs/dp.yaml`` (``make train-dp``: ScatterNet features) and ``dp_pixels.yaml`` build a private
    manualgrad model on Poisson batches, its input size linked to the data's features."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    cli = cli_main(["--config", str(REPO / "configs" / config)], run=False)
    assert isinstance(cli.model.privacy, Privacy) and cli.model.privacy.target_epsilon <= 3.0
    assert cli.datamodule.hparams["poisson_sampling"] and cli.model.hparams["backend"] == "manualgrad"
    assert cli.model.hparams["in_features"] == cli.datamodule.in_features == size
    loss = F.cross_entropy(cli.model(torch.randn(3, size)), torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# Augmentation multiplicity and the weight average.
# ---------------------------------------------------------------------------------------------


def test_augment_multiplicity_averages_each_examples_copies(data_root: Path) -> None:
    """K = 3 shifted copies a training example: (N, K, 1, 28, 28) batches; the per-sample gradient of the
    model's training loss is the mean over an example's copies of each copy's own gradient."""
    import manualgrad

    dm = MNISTDataModule(data_dir=str(data_root), batch_size=8, shift_augment=1, augment_multiplicity=3)
    dm.setup("fit")
    dm.trainer = type("T", (), {"training": True})()  # type: ignore[assignment]
    dm._seed_augmentation(0, 0)
    x0, y0 = dm.datasets["train"][list(range(8))]
    x, y = dm.on_after_batch_transfer((x0, y0), 0)
    assert x.shape == (8, 3, 1, 28, 28) and torch.equal(y, y0)
    assert not torch.equal(x[:, 0], x[:, 1]) or not torch.equal(x[:, 1], x[:, 2])
    model = MNISTClassifier(hidden_sizes=[16], dropout=0.0).double()
    x = x.double()
    with manualgrad.per_sample(model.net, "grad_sample"):
        logits, targets = model._train_logits(x, y)
        model.loss_fn(logits, targets).backward()
    got = {n: p.grad_sample.clone() for n, p in model.net.named_parameters()}
    for k in range(3):
        model.net.zero_grad()
        with manualgrad.per_sample(model.net, "grad_sample"):
            model.loss_fn(model.net(x[:, k].flatten(1)), y).backward()
        for n, p in model.net.named_parameters():
            got[n] -= p.grad_sample / 3
    for n, rest in got.items():
        assert rest.abs().max() < 1e-12, n


def test_weight_average_follows_the_steps_and_serves_evaluation(data_root: Path, tmp_path: Path) -> None:
    """ema ← d·ema + (1 − d)·w after each step, d = min(decay, (1 + t)/(10 + t)); eval mode uses it."""
    pl.seed_everything(0)
    model = MNISTClassifier(hidden_sizes=[16], dropout=0.0, lr=1e-2, ema_decay=0.5, scheduler="none")
    seen: list[list[torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            seen.append([p.detach().clone() for p in pl_module.net.parameters()])

    start = [p.detach().clone() for p in model.net.parameters()]
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=64)
    _trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1, callbacks=[Record()]).fit(model, dm)
    ema = start
    for t, weights in enumerate(seen, start=1):
        d = min(0.5, (1 + t) / (10 + t))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, weights, strict=True)]
    for e, got in zip(ema, model.ema_net.parameters(), strict=True):  # type: ignore[union-attr]
        torch.testing.assert_close(got, e)
    x = torch.randn(5, 784)
    model.eval()
    torch.testing.assert_close(model(x), model.ema_net(x))  # type: ignore[misc]
    model.train()
    torch.testing.assert_close(model._train_logits(x, torch.zeros(5))[0], model.net(x))
