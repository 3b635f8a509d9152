"""The training app's epoch against a bare PyTorch loop over the same data, model and optimizer.

Method. One process builds the app exactly as ``python -m train.mnist fit --config <config>`` does
(``LightningCLI`` with ``run=False``: the config's ``MNISTClassifier``, ``MNISTDataModule``,
trainer, logger, checkpointing, learning-curve callback and progress bar; logs and checkpoints go to
a temporary folder) and calls ``trainer.fit``. A callback times every training epoch of the app
(**A**) and, at the epoch boundaries, runs an epoch of the bare loop (**B**) on its own
``MNISTClassifier`` (same class and hyperparameters), with the same optimizer and per-step LR
scheduler (:func:`train.model.make_optimizer`), the same ±``shift_augment`` px shift augmentation
(:func:`train.data.random_shift`) and the same preloaded, normalised training tensors (the data
module's own ``datasets["train"]``), shuffled per epoch::

    for x, y in batches:
        opt.zero_grad(); loss = loss_fn(net(aug(x)), y); loss.backward(); opt.step(); sched.step()

Two ways to alternate them (``--interleave``):

* ``step`` (the default, :class:`StepInterleave`): one bare step runs after each of the app's
  steps, in the app's ``on_train_batch_end`` (A B A B ... within every epoch). Each pair is a few
  milliseconds long, so this VM's drifting speed (two bare epochs in a row differ by up to 15 %)
  meets both sides alike. Reported per epoch: the median app and bare step, the median of the
  per-step ratios, and both epochs' seconds: the app's epoch is its wall time less the bare steps
  run inside it and the validation loop (so its epoch-level work, the hooks and the checkpoint,
  counts), the bare epoch the sum of its steps. The figure: the median step ratio over the measured
  epochs, and their summed epoch ratio;
* ``epoch`` (:class:`Interleave`): whole epochs in ABBA order (B0 A0 A1 B1 B2 A2 A3 B3 ...), so a
  slow drift of the machine's speed affects both sides alike; pair ``i`` is (A_i, B_i), the ratio
  the median of the per-pair ratios A_i / B_i (the table also gives process CPU times).

What an app epoch counts: wall time from its ``on_train_epoch_start`` to the next epoch's (or
``on_train_end``): training batches, logging, metrics, progress bar, reseeding, augmentation, the
data loader, epoch-end hooks and checkpointing, **minus** the validation loop, which is timed
(``on_validation_start`` to ``on_validation_end``) and reported separately (and, with ``step``,
minus the bare steps run inside it). The bare loop does no validation.

Warm-up: manualgrad compiles one kernel per shape (process-wide cache), so the first ``--warmup``
epochs (pairs; default 1: both sides see the full and the last, short batch shape, and the app its
validation shapes) are reported separately and not counted.

Usage::

    python -m benchmarks.app_loop                       # configs/default.yaml, 1 warm-up + 3 epochs
    python -m benchmarks.app_loop --rounds 5 --limit-batches 100   # quicker, partial epochs
    python -m benchmarks.app_loop --interleave epoch    # whole epochs, ABBA
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.data import MNIST_MEAN, MNIST_STD, MNISTDataModule, random_shift
from train.mnist import cli_main
from train.model import MNISTClassifier, make_optimizer

__all__ = ["BareLoop", "Interleave", "StepInterleave", "main", "run", "run_steps"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """A plain training loop over the data module's preloaded training tensors.

    Args:
        model: a fresh ``MNISTClassifier`` (its ``net`` and ``loss_fn`` are used as in the app).
        data: the app's data module, already set up (its ``datasets["train"]`` tensors are used).
        total_steps: optimizer steps the LR schedule spans (the app's ``estimated_stepping_batches``).
        limit_batches: batches per epoch (``None``: all).
    """

    def __init__(self, model: MNISTClassifier, data: MNISTDataModule, total_steps: int, limit_batches: int | None):
        ds = data.datasets["train"]
        self.images, self.labels = ds.images, ds.labels
        self.device = self.labels.device
        self.model = model.to(self.device).train()
        self.opt, self.sched = make_optimizer(self.model, total_steps)
        self.batch_size = int(data.hparams["batch_size"])
        self.shift = int(data.hparams["shift_augment"])
        self.seed = int(data.hparams["shuffle_seed"])
        self.background = (0.0 - MNIST_MEAN) / MNIST_STD
        self.limit_batches = limit_batches
        self.generator = torch.Generator(device=self.device)

    def batches(self, epoch: int) -> tuple[torch.Tensor, ...]:
        """The sample indices of each batch of ``epoch`` (shuffled per epoch); reseeds the augmentation."""
        n = len(self.labels)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).to(self.device)
        self.generator.manual_seed((self.seed + epoch) * 1_000_003)
        batches = perm.split(self.batch_size)
        return batches if self.limit_batches is None else batches[: self.limit_batches]

    def step(self, idx: torch.Tensor) -> None:
        """One training step on the samples ``idx``: augment, forward, loss, backward, optimizer, scheduler."""
        x, y = self.images[idx], self.labels[idx]
        if self.shift > 0:
            x = random_shift(x, self.shift, self.background, self.generator)
        with torch.enable_grad():
            self.opt.zero_grad()
            loss = self.model.loss_fn(self.model(x), y)
            loss.backward()
            self.opt.step()
        if self.sched is not None:
            self.sched.step()

    def epoch(self, epoch: int) -> tuple[float, float]:
        """Train one epoch; return its wall and process CPU times in seconds."""
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for idx in self.batches(epoch):
            self.step(idx)
        _sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


class _Timer(pl.Callback):
    """What both ways of interleaving share: the bare loop (built in ``on_train_start``, once the data
    module is set up), the stop after ``epochs`` app epochs, and each app epoch's validation time
    (wall and process CPU), which its own time excludes. ``_t0`` is the open app epoch's start."""

    def __init__(self, model: MNISTClassifier, data: MNISTDataModule, epochs: int, limit: int | None) -> None:
        self.model, self.data, self.epochs, self.limit = model, data, epochs, limit
        self.bare: BareLoop | None = None
        self.app: list[float] = []  # per epoch, seconds
        self.bare_times: list[float] = []
        self.val: list[float] = []
        self._t0: float | None = None
        self._val_t0 = self._val_c0 = 0.0
        self._val_in_epoch = self._val_cpu_in_epoch = 0.0
        self._device = torch.device("cpu")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bare = BareLoop(self.model, self.data, int(trainer.estimated_stepping_batches), self.limit)
        self._device = self.bare.device

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            _sync(self._device)
            self._val_t0, self._val_c0 = time.perf_counter(), time.process_time()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._t0 is not None:
            _sync(self._device)
            self._val_in_epoch += time.perf_counter() - self._val_t0
            self._val_cpu_in_epoch += time.process_time() - self._val_c0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class Interleave(_Timer):
    """Time the app's training epochs and run bare epochs between them in ABBA order.

    ``epochs`` app epochs are trained (then ``trainer.should_stop``); pair ``i`` is app epoch ``i``
    and bare epoch ``i``; bare epoch ``i`` runs before app epoch ``i`` for even ``i``, after it for
    odd ``i``.
    """

    def __init__(self, model: MNISTClassifier, data: MNISTDataModule, epochs: int, limit: int | None) -> None:
        super().__init__(model, data, epochs, limit)
        self.app_cpu: list[float] = []
        self.bare_cpu: list[float] = []
        self._c0 = 0.0

    def _close_app_epoch(self, trainer: pl.Trainer) -> None:
        if self._t0 is None:
            return
        _sync(self._device)
        self.app.append(time.perf_counter() - self._t0 - self._val_in_epoch)
        self.app_cpu.append(time.process_time() - self._c0 - self._val_cpu_in_epoch)
        self.val.append(self._val_in_epoch)
        self._t0 = None

    def _run_bare(self, upto: int) -> None:
        """Run bare epochs until ``upto`` of them have run."""
        assert self.bare is not None
        while len(self.bare_times) < upto:
            wall, cpu = self.bare.epoch(len(self.bare_times))
            self.bare_times.append(wall)
            self.bare_cpu.append(cpu)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_app_epoch(trainer)
        k = trainer.current_epoch
        # ABBA: before an even app epoch k run B_{k-1} (odd, after its A) and B_k.
        if k % 2 == 0:
            self._run_bare(k + 1)
        self._val_in_epoch = self._val_cpu_in_epoch = 0.0
        _sync(self._device)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_app_epoch(trainer)
        self._run_bare(len(self.app))


@dataclass(frozen=True)
class Result:
    """Per-epoch seconds of both sides (warm-up pairs first) and the app's validation times."""

    app: list[float]
    bare: list[float]
    app_cpu: list[float]
    bare_cpu: list[float]
    val: list[float]
    warmup: int
    batches: int
    progress_bar: str

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.app[self.warmup :], self.bare[self.warmup :], strict=True)]

    @property
    def cpu_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.app_cpu[self.warmup :], self.bare_cpu[self.warmup :], strict=True)]


Timer = TypeVar("Timer", bound=_Timer)


def _fit(
    timer_class: Callable[[MNISTClassifier, MNISTDataModule, int, int | None], Timer],
    config: Path,
    epochs: int,
    limit_batches: int | None,
    extra_args: Sequence[str],
) -> tuple[Timer, int, str]:
    """Build the app as ``python -m train.mnist fit --config <config>`` does (logs and checkpoints in a
    temporary folder, at least ``epochs`` epochs), fit it with a ``timer_class`` callback driving a bare
    loop on a fresh ``MNISTClassifier`` with the same weights; return the callback, the batches per
    epoch and the progress bar's description."""
    with tempfile.TemporaryDirectory(prefix="app_loop-") as tmp:
        args = [
            "--config",
            str(config),
            f"--trainer.default_root_dir={tmp}",
            f"--trainer.logger.init_args.save_dir={tmp}",
        ]
        if limit_batches is not None:
            args.append(f"--trainer.limit_train_batches={limit_batches}")
        argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads only ``args``
        try:
            cli = cli_main([*args, *extra_args], run=False)
        finally:
            sys.argv = argv
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        assert isinstance(model, MNISTClassifier) and isinstance(data, MNISTDataModule)
        if trainer.max_epochs is None or trainer.max_epochs < epochs:
            trainer.fit_loop.max_epochs = epochs
        params = inspect.signature(MNISTClassifier).parameters
        bare_model = MNISTClassifier(**{k: v for k, v in model.hparams.items() if k in params})
        bare_model.load_state_dict(model.state_dict())
        timer = timer_class(bare_model, data, epochs, limit_batches)
        trainer.callbacks.append(timer)  # type: ignore[attr-defined]
        trainer.fit(model, datamodule=data)
        bar = trainer.progress_bar_callback
        bar_desc = "none" if bar is None else f"{type(bar).__name__}(refresh_rate={getattr(bar, 'refresh_rate', '?')})"
        return timer, int(trainer.num_training_batches), bar_desc


def run(
    config: Path = DEFAULT_CONFIG,
    rounds: int = 3,
    warmup: int = 1,
    limit_batches: int | None = None,
    extra_args: Sequence[str] = (),
) -> Result:
    """Build the app from ``config``, train ``warmup + rounds`` interleaved pairs of epochs, return the times."""
    timer, batches, bar = _fit(Interleave, config, warmup + rounds, limit_batches, extra_args)
    return Result(
        app=timer.app,
        bare=timer.bare_times,
        app_cpu=timer.app_cpu,
        bare_cpu=timer.bare_cpu,
        val=timer.val,
        warmup=warmup,
        batches=batches,
        progress_bar=bar,
    )


class StepInterleave(_Timer):
    """Alternate the app's training steps with the bare loop's, one each (A B A B ...), timing both.

    Bare step ``k`` of an epoch runs in the app's ``on_train_batch_end`` of its batch ``k`` (this
    callback's; Lightning calls the checkpoint callback's after it). The app's step ``k`` is the wall
    time from the end of bare step ``k − 1`` (the epoch's start for ``k = 0``) to the start of bare
    step ``k``: all the trainer does for a batch (the hooks, the loop, fetching and moving the batch,
    augmentation, reseeding, the training step, backward, optimizer and scheduler steps, the metrics
    and logging). The app's epoch is its wall time from its start to the next epoch's (or the end of
    training) less the bare steps run inside it and the validation loop: the epoch's own work too
    (its hooks, the checkpoint, the epoch's logging). The bare epoch is the sum of its steps plus
    drawing its batches. Steps a few milliseconds long alternate, so this VM's drifting speed (two
    bare epochs in a row differ by up to 15 % here) meets both sides alike.
    """

    def __init__(self, model: MNISTClassifier, data: MNISTDataModule, epochs: int, limit: int | None) -> None:
        super().__init__(model, data, epochs, limit)
        self.pairs: list[list[tuple[float, float]]] = []  # per epoch: (app step, bare step) seconds
        self._batches: Iterator[torch.Tensor] = iter(())
        self._mark = 0.0  # the end of the last bare step (or the epoch's start)
        self._in_bare = self._bare_sum = 0.0

    def _close_epoch(self) -> None:
        if self._t0 is None:
            return
        _sync(self._device)
        wall = time.perf_counter() - self._t0
        self.app.append(wall - self._in_bare - self._val_in_epoch)
        self.bare_times.append(self._bare_sum)
        self.val.append(self._val_in_epoch)
        self._t0 = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch()
        assert self.bare is not None
        _sync(self._device)
        start = time.perf_counter()
        self._batches = iter(self.bare.batches(trainer.current_epoch))
        drawn = time.perf_counter() - start
        self.pairs.append([])
        self._in_bare = self._bare_sum = drawn
        self._val_in_epoch = self._val_cpu_in_epoch = 0.0
        self._t0 = start
        self._mark = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self.bare is not None
        _sync(self._device)
        start = time.perf_counter()
        idx = next(self._batches, None)
        if idx is not None:
            self.bare.step(idx)
            _sync(self._device)
        end = time.perf_counter()
        if idx is not None:
            self.pairs[-1].append((start - self._mark, end - start))
            self._bare_sum += end - start
        self._in_bare += end - start
        self._mark = end

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch()


@dataclass(frozen=True)
class StepResult:
    """Per epoch (warm-up epochs first): the (app, bare) seconds of each step pair, both epochs'
    seconds and the app's validation seconds."""

    pairs: list[list[tuple[float, float]]]
    app: list[float]
    bare: list[float]
    val: list[float]
    warmup: int
    batches: int
    progress_bar: str

    @property
    def step_ratio(self) -> float:
        """The median over the measured epochs' step pairs of app / bare."""
        return statistics.median(a / b for epoch in self.pairs[self.warmup :] for a, b in epoch)

    @property
    def epoch_ratio(self) -> float:
        """The measured epochs' app seconds over their bare seconds (everything per epoch included)."""
        return sum(self.app[self.warmup :]) / sum(self.bare[self.warmup :])


def run_steps(
    config: Path = DEFAULT_CONFIG,
    rounds: int = 3,
    warmup: int = 1,
    limit_batches: int | None = None,
    extra_args: Sequence[str] = (),
) -> StepResult:
    """Build the app from ``config``, train ``warmup + rounds`` epochs with the bare loop's steps
    alternating with the app's (:class:`StepInterleave`), return the times."""
    timer, batches, bar = _fit(StepInterleave, config, warmup + rounds, limit_batches, extra_args)
    return StepResult(
        pairs=timer.pairs,
        app=timer.app,
        bare=timer.bare_times,
        val=timer.val,
        warmup=warmup,
        batches=batches,
        progress_bar=bar,
    )


def format_step_table(result: StepResult) -> str:
    """A markdown table per epoch: median step times, the median step ratio, the epochs' seconds and ratio."""
    w = result.warmup
    lines = [
        "| epoch | app step (ms, median) | bare step (ms, median) | step app / bare (median of pairs) "
        "| app epoch (s) | bare epoch (s) | epoch app / bare | app validation (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (pairs, a, b, v) in enumerate(zip(result.pairs, result.app, result.bare, result.val, strict=True)):
        label = f"{i} (warm-up)" if i < w else str(i)
        app_ms = statistics.median(p[0] for p in pairs) * 1e3
        bare_ms = statistics.median(p[1] for p in pairs) * 1e3
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        lines.append(
            f"| {label} | {app_ms:.2f} | {bare_ms:.2f} | {ratio:.3f} | {a:.2f} | {b:.2f} | {a / b:.3f} | {v:.2f} |"
        )
    if len(result.app) > w:
        measured = [p for pairs in result.pairs[w:] for p in pairs]
        app_ms = statistics.median(p[0] for p in measured) * 1e3
        bare_ms = statistics.median(p[1] for p in measured) * 1e3
        lines.append(
            f"| **all measured** | **{app_ms:.2f}** | **{bare_ms:.2f}** | **{result.step_ratio:.3f}** "
            f"| {sum(result.app[w:]):.2f} | {sum(result.bare[w:]):.2f} | **{result.epoch_ratio:.3f}** "
            f"| {sum(result.val[w:]):.2f} |"
        )
    return "\n".join(lines)


def format_table(result: Result) -> str:
    """A markdown table: warm-up and measured pairs, medians and the median per-pair ratios."""
    w = result.warmup
    lines = [
        "| pair | app epoch (s) | bare epoch (s) | app / bare | app CPU (s) | bare CPU (s) | CPU app / bare "
        "| app validation (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = zip(result.app, result.bare, result.app_cpu, result.bare_cpu, result.val, strict=True)
    for i, (a, b, ac, bc, v) in enumerate(rows):
        label = f"{i} (warm-up)" if i < w else str(i)
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.3f} | {ac:.2f} | {bc:.2f} | {ac / bc:.3f} | {v:.2f} |")
    if result.ratios:
        series = (result.app, result.bare, result.app_cpu, result.bare_cpu, result.val)
        med = [statistics.median(xs[w:]) for xs in series]
        ratio, cpu_ratio = statistics.median(result.ratios), statistics.median(result.cpu_ratios)
        lines.append(
            f"| **median** | **{med[0]:.2f}** | **{med[1]:.2f}** | **{ratio:.3f}** | {med[2]:.2f} | {med[3]:.2f} "
            f"| {cpu_ratio:.3f} | {med[4]:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.app_loop [--config CFG] [--rounds N] [--warmup N] [--limit-batches N]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="app config (default: %(default)s)")
    parser.add_argument("--rounds", "--epochs", type=int, default=3, help="measured ABBA pairs of epochs")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up pairs, reported but not counted")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (default: all)")
    parser.add_argument(
        "--interleave",
        choices=("step", "epoch"),
        default="step",
        help="alternate single steps (default) or whole epochs (ABBA) of the app and the bare loop",
    )
    parser.add_argument("extra", nargs="*", help="extra LightningCLI arguments for the app (after --)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    result: Result | StepResult
    if args.interleave == "step":
        result = run_steps(args.config, args.rounds, args.warmup, args.limit_batches, args.extra)
        table, unit = format_step_table(result), "epochs, steps interleaved"
    else:
        result = run(args.config, args.rounds, args.warmup, args.limit_batches, args.extra)
        table, unit = format_table(result), "epochs interleaved ABBA"
    print()
    print(
        f"## App vs bare loop ({unit}): {args.config.name}, {result.batches} batches/epoch, "
        f"{torch.get_num_threads()} threads, progress bar: {result.progress_bar}, "
        f"stdout {'is' if sys.stdout.isatty() else 'is not'} a terminal; validation excluded (last column)\n"
    )
    print(table, flush=True)


if __name__ == "__main__":
    main()
