"""The MNIST classifier: an MLP built from ``manualgrad.nn`` (or ``torch.nn`` for A/B runs)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from train.features import FEATURE_SIZES
from train.privacy import DPSGD, Privacy, statement

Backend = Literal["manualgrad", "native"]
Init = Literal["torch", "he"]
Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["onecycle", "cosine", "none"]
Stage = Literal["train", "val", "test"]
SavedDtype = Literal["float32", "bfloat16"]

NUM_CLASSES = 10
IN_FEATURES = FEATURE_SIZES["pixels"]


def native_activation(name: str) -> type[nn.Module]:
    """The ``torch.nn`` module class for a lowercase functional name (``"relu"``, ``"silu"``...)."""
    wanted = name.replace("_", "").lower()
    for attr in nn.modules.activation.__all__:
        if attr.lower() == wanted:
            cls = getattr(nn, attr)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                return cls
    raise ValueError(
        f"Unknown activation {name!r}: expected a lowercase torch.nn.functional activation name "
        "such as 'relu', 'gelu', 'tanh', 'sigmoid' or 'silu'."
    )


def native_mlp(
    in_features: int,
    hidden_features: Sequence[int],
    out_features: int,
    activation: str = "relu",
    dropout: float = 0.0,
    bias: bool = True,
) -> nn.Sequential:
    """``torch.nn`` twin of ``manualgrad.nn.MLP``.

    ``Linear → activation [→ Dropout]`` per hidden layer (no Dropout layers when ``dropout == 0``),
    then ``Linear``: the same layer order and ``state_dict`` keys as ``manualgrad.nn.MLP``, so
    checkpoints move between backends.
    """
    act = native_activation(activation)
    layers: list[nn.Module] = []
    prev = in_features
    for width in hidden_features:
        layers += [nn.Linear(prev, width, bias=bias), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = width
    layers.append(nn.Linear(prev, out_features, bias=bias))
    return nn.Sequential(*layers)


def build_network(
    backend: Backend,
    hidden_sizes: Sequence[int],
    activation: str,
    dropout: float,
    save_activations: SavedDtype = "float32",
    in_features: int = IN_FEATURES,
) -> tuple[nn.Module, nn.Module]:
    """Return ``(mlp, cross_entropy)`` from the chosen backend."""
    if backend == "manualgrad":
        import manualgrad.nn as mnn

        save_dtype = None if save_activations == "float32" else getattr(torch, save_activations)
        net = mnn.MLP(
            in_features, list(hidden_sizes), NUM_CLASSES, activation=activation, dropout=dropout, save_dtype=save_dtype
        )
        return net, mnn.CrossEntropyLoss()
    if save_activations != "float32":
        raise ValueError(f"save_activations={save_activations!r} needs backend='manualgrad', got {backend!r}.")
    if backend == "native":
        return native_mlp(in_features, hidden_sizes, NUM_CLASSES, activation, dropout), nn.CrossEntropyLoss()
    raise ValueError(f"Unknown backend {backend!r}: expected 'manualgrad' or 'native'.")


def he_init(net: nn.Module) -> None:
    """He-uniform hidden layers (``kaiming_uniform_`` for ReLU, zero bias) and a zero output layer."""
    import manualgrad.nn as mnn

    linears = [m for m in net.modules() if isinstance(m, (nn.Linear, mnn.Linear))]
    with torch.no_grad():
        for m in linears[:-1]:
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                m.bias.zero_()
        linears[-1].weight.zero_()
        if linears[-1].bias is not None:
            linears[-1].bias.zero_()


def seed_device_rng(seed: int, device: torch.device) -> None:
    """Seed the default generator(s) that random ops on ``device`` draw from (dropout's masks).

    On CPU and CUDA this is the part of ``torch.manual_seed(seed)`` that matters there: the same
    streams, without its per-call work for every other backend (CUDA's lazy seeding records a stack
    trace and queries the driver when CUDA is not initialised; it cost milliseconds a batch).
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


class MNISTClassifier(pl.LightningModule):
    """An MLP on flattened 28x28 images (or their features), trained with cross-entropy.

    Args:
        backend: ``"manualgrad"`` builds the network and loss from ``manualgrad.nn`` (hand-derived
            backward formulas); ``"native"`` builds the identical architecture from ``torch.nn``.
        hidden_sizes: widths of the hidden layers (``[]``: a linear model).
        activation: lowercase ``torch.nn.functional`` name (``relu``, ``gelu``, ``tanh``...).
        dropout: dropout probability after every hidden activation.
        optimizer: ``"adamw"`` or ``"sgd"`` (with momentum / Nesterov).
        lr: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) decay of weight matrices (not biases).
        momentum: SGD momentum (ignored by AdamW).
        nesterov: use Nesterov momentum with SGD.
        scheduler: ``"onecycle"`` (warm-up, cosine anneal), ``"cosine"`` or ``"none"``; per step.
        warmup_pct: fraction of the steps spent warming up with ``onecycle``.
        save_activations: ``"bfloat16"`` saves the hidden activations for backward in bfloat16
            (manualgrad's opt-in memory-saving mode; ``"float32"`` saves them as computed).
        seed: base seed for dropout. The default generator of the training device is reseeded from
            ``(seed, epoch, batch, rank)`` before every training batch, so resuming from an epoch-end
            checkpoint continues exactly like the uninterrupted run.
        ema_decay: evaluate (validate, test, predict) an exponential moving average of the weights,
            updated after every optimizer step with decay ``min(ema_decay, (1 + t) / (10 + t))``;
            ``None``: the weights themselves. Kept in the checkpoint (``ema_net.*``).
        init: ``"torch"`` (torch.nn's default initialisation) or ``"he"``: He-uniform hidden layers
            (``kaiming_uniform_`` for ReLU) and a zero-initialised output layer.
        privacy: DP-SGD options (:class:`~train.privacy.Privacy`; ``None``: ordinary training). Needs
            ``backend="manualgrad"`` (one-pass per-sample clipping) and Poisson-sampled batches
            (``data.poisson_sampling: true``); see :mod:`train.privacy`.
        in_features: the input size: 784 for pixels; the command line sets it from the data
            module's ``features`` (:mod:`train.features`: 3969 for ScatterNet features).

    Logged: ``train_loss_step`` on the steps the trainer writes to its logger (every
    ``log_every_n_steps``), ``train_loss_epoch`` and ``train_acc`` per epoch, ``val_loss``/``val_acc``
    and ``test_loss``/``test_acc`` per epoch. The training epoch values are running sums on the
    device (no per-step ``self.log`` or metric update) handed to torchmetrics and logged once, at the
    epoch's last batch.
    With privacy, ``epsilon`` after each epoch's steps; checkpoints keep the accountant's history.
    """

    def __init__(
        self,
        backend: Backend = "manualgrad",
        hidden_sizes: Sequence[int] = (1024, 1024),
        activation: str = "relu",
        dropout: float = 0.2,
        optimizer: Optimizer = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        scheduler: Scheduler = "onecycle",
        warmup_pct: float = 0.2,
        save_activations: SavedDtype = "float32",
        seed: int = 0,
        ema_decay: float | None = None,
        init: Init = "torch",
        privacy: Privacy | None = None,
        in_features: int = IN_FEATURES,
    ) -> None:
        super().__init__()
        if isinstance(privacy, dict):  # from a checkpoint's hyperparameters
            privacy = Privacy(**privacy)
        self.save_hyperparameters(ignore=["privacy"])
        # plain values in the checkpoint (torch.load(weights_only=True) reads it), rebuilt above
        self.hparams["privacy"] = None if privacy is None else dataclasses.asdict(privacy)
        if privacy is not None and backend != "manualgrad":
            raise ValueError(
                f"privacy: expected backend='manualgrad' (per-sample clipping in one backward pass), but got "
                f"backend={backend!r}"
            )
        self.net, self.loss_fn = build_network(
            backend, hidden_sizes, activation, dropout, save_activations, in_features
        )
        if init == "he":
            he_init(self.net)
        elif init != "torch":
            raise ValueError(f"Unknown init {init!r}: expected 'torch' or 'he'.")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"Expected 0 < ema_decay < 1, got {ema_decay}")
        self.ema_net: nn.Module | None = None
        if ema_decay is not None:
            self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.privacy = privacy
        self.dp: DPSGD | None = None  # set up with the data (fit)
        self.privacy_state: dict[str, Any] | None = None  # of the checkpoint last loaded
        if privacy is not None:
            import manualgrad

            with manualgrad.clip_per_sample(self.net, privacy.max_grad_norm):
                pass  # raises now for parameters outside manualgrad's layers
        # The training epoch's loss and (micro) accuracy: each step adds to three running sums on the device
        # (Σ loss·rows, Σ correct, rows; no host sync, a few µs), and the epoch's last step hands them to these
        # metrics once, which sync them across processes, log and reset. Updating torchmetrics every step cost
        # 0.6 ms a step in the app (2 % of the default run's step; ``python -m benchmarks.app_loop``).
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MeanMetric(nan_strategy="disable")  # micro accuracy: the rows' mean correctness
        self._train_sums: torch.Tensor | None = None  # (Σ loss·rows, Σ correct) of this epoch's steps
        self._train_rows = 0
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self._train_epoch_logged = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` for images ``(N, 1, 28, 28)`` or ``(N, 784)`` (the weight average in eval
        mode, with ``ema_decay``)."""
        net = self.net if self.training or self.ema_net is None else self.ema_net
        return net(x.flatten(1))

    def _train_logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of a training batch, one row per image copy: ``(N·K, 10)`` for ``K`` copies
        ``(N, K, 1, 28, 28)``; the loss's mean over all rows is then each example's mean over its copies
        (a sample's rows stay in dim 1 until the loss: its per-sample gradient averages them)."""
        if x.dim() == 5:
            logits = self.net(x.flatten(2))  # (N, K, 10)
            return logits.flatten(0, 1), y.repeat_interleave(x.shape[1])
        return self.net(x.flatten(1)), y

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: Stage) -> None:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        acc: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        acc.update(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, y = self._train_logits(*batch)
        loss = self.loss_fn(logits, y)
        if len(y):  # Poisson sampling may draw an empty batch: a valid (noise-only) step, nothing to count
            with torch.no_grad():
                if self._train_sums is None:
                    self._train_sums = loss.new_zeros(2)
                self._train_sums[0].add_(loss, alpha=len(y))  # the batch-size-weighted mean, as self.log's
                self._train_sums[1].add_((logits.argmax(1) == y).sum())
                self._train_rows += len(y)
        # self.log costs far more than a step's bookkeeping: log the step loss only on the steps
        # the trainer writes (those where ``trainer.log_every_n_steps`` divides the step count).
        every: int = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set at runtime
        if every > 0 and (self.global_step + 1) % every == 0:
            self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_train_epoch()
        return loss

    def _log_train_epoch(self) -> None:
        """Log the epoch's training loss and accuracy (torchmetrics computes, syncs and resets them).

        Called at the last batch, so that callbacks reading ``trainer.callback_metrics`` in
        ``on_train_epoch_end`` (before this module's own hook runs) see them.
        """
        if self._train_sums is not None and self._train_rows:
            rows = self._train_rows
            self.train_loss.update(self._train_sums[0] / rows, weight=rows)
            self.train_acc.update(self._train_sums[1] / rows, weight=rows)
        self.log("train_loss_epoch", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self._train_epoch_logged = True
        self._train_sums, self._train_rows = None, 0

    def on_train_epoch_start(self) -> None:
        self._train_epoch_logged = False
        self._train_sums, self._train_rows = None, 0

    def on_train_epoch_end(self) -> None:
        # An epoch cut short (``trainer.should_stop`` mid-epoch, ``max_steps``) still logs its metrics.
        if not self._train_epoch_logged and self._train_rows > 0:
            self._log_train_epoch()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=-1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Reseeding per batch makes dropout a function of (seed, epoch, batch, rank) only, whatever
        # else consumed the RNG: resuming from an epoch-end checkpoint is exact.
        key = (self.hparams["seed"] * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx
        seed_device_rng(key * 1_009 + self.global_rank, self.device)

    def configure_optimizers(self) -> Any:
        wrap = None if self.dp is None else self.dp.optimizer
        opt, sched = make_optimizer(self, int(self.trainer.estimated_stepping_batches), wrap)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- differential privacy (train.privacy) ---------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.privacy is None or stage != "fit" or self.dp is not None:
            return
        data = self.trainer.datamodule  # type: ignore[attr-defined]
        if not getattr(data, "hparams", {}).get("poisson_sampling", False):
            raise ValueError(
                "privacy: expected Poisson-sampled batches (data.poisson_sampling: true), but the data module "
                "draws fixed-size shuffled batches; DP-SGD's accounting assumes Poisson sampling"
            )
        steps = int(self.trainer.estimated_stepping_batches)
        self.dp = DPSGD(self.privacy, len(data.datasets["train"]), data.hparams["batch_size"], steps)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.dp is None:
            return super().backward(loss, *args, **kwargs)
        self.dp.backward(self.net, loss)  # p.grad = Σ_n clip(g_n); Opacus's optimizer adds noise and scales
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_net is not None:  # after the optimizer step: ema ← d·ema + (1 − d)·w
            t = self.global_step
            decay = min(float(self.hparams["ema_decay"]), (1 + t) / (10 + t))
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema_net.parameters()), list(self.net.parameters()), 1 - decay)
        if self.dp is not None and batch_idx + 1 >= self.trainer.num_training_batches:
            self.log("epsilon", self.dp.epsilon(), on_step=False, on_epoch=True, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.dp is not None:
            checkpoint["privacy"] = self.dp.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.privacy_state = checkpoint.get("privacy")
        if self.dp is not None and self.privacy_state is not None:
            self.dp.load_state_dict(self.privacy_state)  # a resumed run continues the accountant's history

    def privacy_statement(self) -> str | None:
        """``Privacy: ε = ... at δ = ...`` of the weights in use: of the checkpoint they were loaded from,
        else of this run's steps; ``None`` without privacy."""
        if self.privacy_state is not None:
            return statement(self.privacy_state)
        return None if self.dp is None else self.dp.statement()


def make_optimizer(
    model: MNISTClassifier,
    total_steps: int,
    wrap: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer and per-step LR scheduler (``None`` for ``scheduler="none"``) of ``model``'s
    hyperparameters; weight matrices decay, biases do not. ``total_steps``: the run's optimizer steps;
    ``wrap``: applied to the optimizer before the scheduler is attached (DP-SGD's Opacus wrapper).
    """
    hp = model.hparams
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": hp["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt: torch.optim.Optimizer
    if hp["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=hp["lr"])
    elif hp["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"])
    else:
        raise ValueError(f"Unknown optimizer {hp['optimizer']!r}: expected 'adamw' or 'sgd'.")
    if wrap is not None:
        opt = wrap(opt)
    if hp["scheduler"] == "none":
        return opt, None
    sched: torch.optim.lr_scheduler.LRScheduler
    if hp["scheduler"] == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=hp["lr"],
            total_steps=total_steps,
            pct_start=hp["warmup_pct"],
            cycle_momentum=hp["optimizer"] == "sgd",
        )
    elif hp["scheduler"] == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        raise ValueError(f"Unknown scheduler {hp['scheduler']!r}: expected 'onecycle', 'cosine' or 'none'.")
    return opt, sched
