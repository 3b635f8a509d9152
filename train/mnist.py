"""LightningCLI entry point for MNIST.

``python -m train.mnist fit|validate|test|predict --config configs/<name>.yaml``

``fit`` trains, keeps the best checkpoint (by ``val_acc``), writes a learning-curve PNG, then tests
the best checkpoint and prints the test accuracy as its last line (``--test_after_fit false`` skips
it). Resume an interrupted run with the same config plus
``--ckpt_path <run>/checkpoints/last.ckpt``: the LR schedule is part of the checkpoint, so keep
``max_epochs`` unchanged (to train longer, start a new run).

The progress bar is on by default only when stdout is a terminal: redirected (``make train > log``),
the log gets one line per epoch from :class:`~train.callbacks.LearningCurve` instead of the bar's
carriage-return updates (``--trainer.enable_progress_bar true`` brings the bar back).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from train.callbacks import LearningCurve
from train.data import MNISTDataModule
from train.model import MNISTClassifier


def checkpoint_callback() -> ModelCheckpoint:
    """Best checkpoint by validation accuracy (``trainer.checkpoint_callback``)."""
    return ModelCheckpoint(
        monitor="val_acc",
        mode="max",
        save_on_train_epoch_end=True,
        filename="best-epoch{epoch:02d}-val_acc{val_acc:.4f}",
        auto_insert_metric_name=False,
    )


def last_checkpoint_callback() -> ModelCheckpoint:
    """``last.ckpt``, written at the end of every epoch, for resuming (and for testing the final model).

    A callback of its own: Lightning's ``save_last`` refreshes ``last.ckpt`` only at the epochs where
    the monitored checkpoint improved, so after a worse epoch it is not the last state.
    """
    return ModelCheckpoint(
        filename="last", monitor=None, save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False
    )


def checkpoint_callbacks() -> list[ModelCheckpoint]:
    """The best (first: ``trainer.checkpoint_callback``) and the last checkpoint."""
    return [checkpoint_callback(), last_checkpoint_callback()]


def progress_bar_default() -> bool:
    """The default of ``trainer.enable_progress_bar``: whether stdout (where the bar writes) is a terminal."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty is not None and isatty())


def _in_features(data: MNISTDataModule) -> int:
    return data.in_features


class MNISTCLI(LightningCLI):
    """``LightningCLI`` for :class:`MNISTClassifier` on :class:`MNISTDataModule`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one setting for both: the data's features fix the model's input size
        parser.link_arguments("data", "model.in_features", compute_fn=_in_features, apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint and print its test accuracy last.",
        )
        parser.add_argument(
            "--test_ckpt",
            type=Literal["best", "last"],
            default="best",
            help="Which checkpoint the test after fit uses: 'best' (by val_acc) or 'last' (all the run's steps).",
        )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True) or getattr(self.trainer, "fast_dev_run", False):
            return
        which = self.config[self.subcommand].get("test_ckpt", "best")
        saved = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        ckpt = saved[0] if which == "best" else next(cb for cb in saved if cb.filename == "last")
        path = ckpt.best_model_path or None
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=path, verbose=False)
        if self.trainer.is_global_zero:
            print(f"{which.capitalize()} checkpoint: {path}")
            self._print_privacy()
            print(f"Test accuracy: {results[0]['test_acc']:.4f}", flush=True)

    def _print_privacy(self) -> None:
        """The privacy statement of the tested weights (DP runs), just before the test accuracy."""
        said = self.model.privacy_statement() if isinstance(self.model, MNISTClassifier) else None
        if said is not None:
            print(said, flush=True)

    def after_test(self) -> None:
        if self.trainer.is_global_zero and self.trainer.callback_metrics.get("test_acc") is not None:
            self._print_privacy()
            print(f"Test accuracy: {float(self.trainer.callback_metrics['test_acc']):.4f}", flush=True)

    def after_predict(self) -> None:
        preds: Any = self.trainer.predict_loop.predictions
        if self.trainer.is_global_zero and preds:
            flat = [int(p) for batch in preds for p in batch]
            print(f"Predicted {len(flat)} test images; first 20 classes: {flat[:20]}", flush=True)


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> MNISTCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` when given."""
    return MNISTCLI(
        MNISTClassifier,
        MNISTDataModule,
        trainer_defaults={
            "callbacks": [*checkpoint_callbacks(), LearningCurve()],
            "enable_progress_bar": progress_bar_default(),
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=list(args) if args is not None else None,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
