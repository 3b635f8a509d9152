"""Callbacks: a one-line summary per epoch and the learning-curve PNG written when fitting ends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

#: Metrics recorded per epoch (logged by ``MNISTClassifier``; ``epsilon`` by private runs only).
CURVE_KEYS = ("train_loss_epoch", "train_acc", "val_loss", "val_acc", "epsilon")


class LearningCurve(pl.Callback):
    """Print per-epoch metrics and plot loss/accuracy per epoch to ``<log_dir>/<filename>``.

    The history is part of the checkpoint, so a resumed run plots the whole curve.

    Args:
        filename: PNG name in the logger's directory (the trainer's root dir without a logger).
    """

    def __init__(self, filename: str = "learning_curve.png") -> None:
        self.filename = filename
        self.history: list[dict[str, float]] = []
        self.path: Path | None = None
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": float(trainer.current_epoch)}
        row.update({k: float(metrics[k]) for k in CURVE_KEYS if k in metrics})
        self.history.append(row)
        parts = [f"{k.removesuffix('_epoch')}={row[k]:.4f}" for k in CURVE_KEYS if k in row]
        msg = f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: " + " ".join(parts)
        self._print(trainer, msg + f" ({time.perf_counter() - self._t0:.1f}s)")

    @rank_zero_only
    def _print(self, trainer: pl.Trainer, msg: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            bar.print(msg)
        else:
            print(msg, flush=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective: call on every rank
        if trainer.is_global_zero and self.history:
            self.path = plot_learning_curve(self.history, Path(log_dir) / self.filename)
            self._print(trainer, f"Learning curve: {self.path}")

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> Path:
    """Plot train/val loss and accuracy per epoch into ``path`` (matplotlib, Agg backend); a third
    panel shows the privacy spent (ε after each epoch) where the history has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) + 1 for r in history]
    private = any("epsilon" in r for r in history)
    fig, axes = plt.subplots(1, 3 if private else 2, figsize=(15 if private else 10, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    if private:
        points = [(e, r["epsilon"]) for e, r in zip(epochs, history, strict=True) if "epsilon" in r]
        axes[2].plot(*zip(*points, strict=True), marker="o", color="C3", label="ε (δ fixed)")
        axes[2].set(xlabel="epoch", ylabel="ε", title="Privacy spent")
    for key, label, ax in (
        ("train_loss_epoch", "train", ax_loss),
        ("val_loss", "val", ax_loss),
        ("train_acc", "train", ax_acc),
        ("val_acc", "val", ax_acc),
    ):
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
