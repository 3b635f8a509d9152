"""Training: configs parse, a short run learns, resume is exact, DDP on CPU matches one process."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from train.callbacks import LearningCurve
from train.data import MNISTDataModule
from train.mnist import checkpoint_callbacks, cli_main
from train.model import MNISTClassifier, native_mlp, seed_device_rng

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


BACKENDS = ["manualgrad", "native"]


def _trainer(root: Path, **kwargs: Any) -> pl.Trainer:
    """A CPU trainer with the CLI's persistent callbacks, quiet, writing under ``root``."""
    callbacks = [*checkpoint_callbacks(), LearningCurve(), *kwargs.pop("callbacks", [])]
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_instantiates(config: Path, data_root: Path) -> None:
    cli = cli_main(["--config", str(config)], run=False)
    assert isinstance(cli.model, MNISTClassifier) and isinstance(cli.datamodule, MNISTDataModule)
    assert cli.trainer.max_epochs is not None and cli.trainer.max_epochs >= 1


def test_native_twin_matches_manualgrad_layout() -> None:
    import manualgrad.nn as mnn

    theirs = mnn.MLP(784, [32, 16], 10, activation="gelu", dropout=0.1).state_dict()
    ours = native_mlp(784, [32, 16], 10, activation="gelu", dropout=0.1).state_dict()
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_run_beats_95_percent(backend: str, data_root: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = MNISTClassifier(backend=backend, hidden_sizes=[256], dropout=0.0, lr=3e-3)  # type: ignore[arg-type]
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=128)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    val_acc = float(trainer.callback_metrics["val_acc"])
    assert val_acc > 0.95, f"expected > 95% validation accuracy after one epoch, got {val_acc:.4f}"
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert Path(trainer.checkpoint_callback.best_model_path).is_file()  # type: ignore[union-attr]


class _StopAfter(pl.Callback):
    """Simulate an interruption: stop after ``epochs`` finished epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_is_exact(backend: str, data_root: Path, tmp_path: Path) -> None:
    """3 epochs straight vs. 2 epochs + resume from last.ckpt: identical weights (torch.equal)."""
    hp: dict[str, Any] = dict(backend=backend, hidden_sizes=[64], dropout=0.2, lr=3e-3, seed=1)
    dm_kw: dict[str, Any] = dict(data_dir=str(data_root), batch_size=128, shift_augment=2)
    run: dict[str, Any] = dict(max_epochs=3, limit_train_batches=30, limit_val_batches=1)

    def fit(root: Path, stop: int | None = None, ckpt: str | None = None) -> tuple[pl.Trainer, MNISTClassifier]:
        pl.seed_everything(7)
        model = MNISTClassifier(**hp)
        trainer = _trainer(root, callbacks=[_StopAfter(stop)] if stop else [], **run)
        trainer.fit(model, datamodule=MNISTDataModule(**dm_kw), ckpt_path=ckpt)
        return trainer, model

    _, straight = fit(tmp_path / "straight")
    first, _ = fit(tmp_path / "resumed", stop=2)
    assert first.current_epoch == 2
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    trainer, resumed = fit(tmp_path / "resumed", ckpt=str(last))
    assert trainer.current_epoch == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"
    curve = next(cb for cb in trainer.callbacks if isinstance(cb, LearningCurve))  # type: ignore[attr-defined]
    assert [int(r["epoch"]) for r in curve.history] == [0, 1, 2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True], ids=["redirected", "terminal"])
def test_progress_bar_only_on_a_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make train > log`: no carriage-return bar in the log (one line per epoch from LearningCurve)."""
    monkeypatch.setattr(sys, "stdout", _Terminal() if tty else io.StringIO())
    cli = cli_main(["--config", str(REPO / "configs" / "smoke.yaml")], run=False)
    assert (cli.trainer.progress_bar_callback is not None) == tty
    on = cli_main(["--config", str(REPO / "configs" / "smoke.yaml"), "--trainer.enable_progress_bar=true"], run=False)
    assert on.trainer.progress_bar_callback is not None


def test_redirected_run_logs_one_line_per_epoch(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["fit", "--config", str(REPO / "configs" / "smoke.yaml"), "--trainer.max_epochs=2"]
    args += ["--trainer.limit_train_batches=5", "--trainer.limit_val_batches=1", "--test_after_fit=false"]
    args += ["--model.hidden_sizes=[16]", f"--trainer.default_root_dir={tmp_path}"]
    cli_main([*args, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "\r" not in out and "it/s" not in out, out[-2000:]
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]


def test_seed_device_rng_is_torch_manual_seed_on_cpu() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(8), torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(99)
    seed_device_rng(1234, torch.device("cpu"))
    got = torch.rand(8), torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_logged_metrics(data_root: Path, tmp_path: Path) -> None:
    """Step loss on every ``log_every_n_steps``-th step; loss and accuracy per epoch (CSV and callbacks)."""
    pl.seed_everything(0)
    model = MNISTClassifier(hidden_sizes=[32], dropout=0.0, lr=3e-3)
    dm = MNISTDataModule(data_dir=str(data_root), batch_size=128)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="m")
    run: dict[str, Any] = dict(max_epochs=2, limit_train_batches=12, limit_val_batches=1, log_every_n_steps=5)
    trainer = _trainer(tmp_path, logger=logger, **run)
    trainer.fit(model, datamodule=dm)
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    step_rows = [int(r["step"]) for r in rows if r.get("train_loss_step")]
    assert step_rows == [4, 9, 14, 19], step_rows
    epoch_rows = [r for r in rows if r.get("train_loss_epoch")]
    assert [int(r["epoch"]) for r in epoch_rows] == [0, 1]
    assert all(0.0 < float(r["train_acc"]) <= 1.0 and float(r["train_loss_epoch"]) > 0 for r in epoch_rows)
    curve = next(cb for cb in trainer.callbacks if isinstance(cb, LearningCurve))  # type: ignore[attr-defined]
    assert [sorted(r) for r in curve.history] == [["epoch", "train_acc", "train_loss_epoch", "val_acc", "val_loss"]] * 2
    assert curve.history[1]["train_loss_epoch"] < curve.history[0]["train_loss_epoch"]


def test_epoch_loss_and_accuracy_are_the_steps_weighted_means(data_root: Path, tmp_path: Path) -> None:
    """``train_loss_epoch`` and ``train_acc`` are the epoch's row-weighted mean loss and accuracy: each
    step's loss and logits are recorded as the step ran (a forward hook), the means formed here."""
    pl.seed_everything(0)
    model = MNISTClassifier(hidden_sizes=[16], dropout=0.0, lr=3e-3)
    steps: list[tuple[float, int, int]] = []  # (loss, correct, rows)
    logits: list[torch.Tensor] = []
    model.net.register_forward_hook(lambda m, args, out: logits.append(out.detach()))

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            y = batch[1]
            steps.append((float(outputs["loss"]), int((logits[-1].argmax(1) == y).sum()), len(y)))

    dm = MNISTDataModule(data_dir=str(data_root), batch_size=100, poisson_sampling=True)  # batches of 70–130 rows
    run: dict[str, Any] = dict(max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    trainer = _trainer(tmp_path, callbacks=[Record()], **run)
    trainer.fit(model, datamodule=dm)
    last = steps[3:]  # the second epoch's steps
    assert len({n for _, _, n in last}) > 1  # the weighting matters
    rows = sum(n for _, _, n in last)
    expected_loss = sum(loss * n for loss, _, n in last) / rows
    expected_acc = sum(c for _, c, _ in last) / rows
    metrics = trainer.callback_metrics
    assert float(metrics["train_loss_epoch"]) == pytest.approx(expected_loss, rel=1e-5)
    assert float(metrics["train_acc"]) == pytest.approx(expected_acc, rel=1e-6)


def _final_val_acc(log_dir: Path) -> float:
    with open(next(log_dir.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    return float([r for r in rows if r.get("val_acc")][-1]["val_acc"])


@pytest.mark.slow
def test_ddp_cpu_two_processes(data_root: Path, tmp_path: Path) -> None:
    """configs/ddp_cpu.yaml (2 gloo processes, 64 per rank) vs. one process (batch 128)."""
    backend = "manualgrad"
    common = [
        "--trainer.max_epochs=1",
        "--model.hidden_sizes=[256]",
        "--model.dropout=0.0",
        "--model.lr=0.003",
        "--data.shift_augment=0",
        f"--model.backend={backend}",
        "--trainer.enable_progress_bar=false",
        "--test_after_fit=false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    env = {**os.environ, "MANUALGRAD_DATA": str(data_root)}
    cmd = [
        sys.executable,
        "-m",
        "train.mnist",
        "fit",
        "--config",
        str(REPO / "configs" / "ddp_cpu.yaml"),
        *common,
        "--trainer.logger.init_args.name=ddp",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Epoch 1/1" in proc.stdout + proc.stderr
    single = cli_main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "default.yaml"),
            *common,
            "--trainer.accelerator=cpu",
            "--trainer.logger.init_args.name=single",
            f"--data.data_dir={data_root}",
        ],
    )
    assert single.trainer.world_size == 1
    ddp_acc, single_acc = _final_val_acc(tmp_path / "ddp"), _final_val_acc(tmp_path / "single")
    assert ddp_acc > 0.93 and abs(ddp_acc - single_acc) < 0.015, (ddp_acc, single_acc)
