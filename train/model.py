"""The MNIST classifier: an MLP built from ``manualgrad.nn`` (or ``torch.nn`` for A/B runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

Backend = Literal["manualgrad", "native"]
Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["onecycle", "cosine", "none"]
Stage = Literal["train", "val", "test"]
SavedDtype = Literal["float32", "bfloat16"]

NUM_CLASSES = 10
IN_FEATURES = 28 * 28


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
) -> tuple[nn.Module, nn.Module]:
    """Return ``(mlp, cross_entropy)`` from the chosen backend."""
    if backend == "manualgrad":
        import manualgrad.nn as mnn

        save_dtype = None if save_activations == "float32" else getattr(torch, save_activations)
        net = mnn.MLP(
            IN_FEATURES, list(hidden_sizes), NUM_CLASSES, activation=activation, dropout=dropout, save_dtype=save_dtype
        )
        return net, mnn.CrossEntropyLoss()
    if save_activations != "float32":
        raise ValueError(f"save_activations={save_activations!r} needs backend='manualgrad', got {backend!r}.")
    if backend == "native":
        return native_mlp(IN_FEATURES, hidden_sizes, NUM_CLASSES, activation, dropout), nn.CrossEntropyLoss()
    raise ValueError(f"Unknown backend {backend!r}: expected 'manualgrad' or 'native'.")


class MNISTClassifier(pl.LightningModule):
    """An MLP on flattened 28x28 images, trained with cross-entropy.

    Args:
        backend: ``"manualgrad"`` builds the network and loss from ``manualgrad.nn`` (hand-derived
            backward formulas); ``"native"`` builds the identical architecture from ``torch.nn``.
        hidden_sizes: widths of the hidden layers.
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
        seed: base seed for dropout. The global RNG is reseeded from ``(seed, epoch, batch, rank)``
            before every training batch, so resuming from an epoch-end checkpoint continues
            exactly like the uninterrupted run.
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net, self.loss_fn = build_network(backend, hidden_sizes, activation, dropout, save_activations)
        self.train_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` for images ``(N, 1, 28, 28)`` or ``(N, 784)``."""
        return self.net(x.flatten(1))

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: Stage) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        acc: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        acc(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=-1)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Reseeding per batch makes dropout a function of (seed, epoch, batch, rank) only, whatever
        # else consumed the global RNG: resuming from an epoch-end checkpoint is exact.
        key = (self.hparams["seed"] * 1_000_003 + self.current_epoch) * 1_000_003 + batch_idx
        torch.manual_seed(key * 1_009 + self.global_rank)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
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
        if hp["scheduler"] == "none":
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched: torch.optim.lr_scheduler.LRScheduler
        if hp["scheduler"] == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=hp["lr"],
                total_steps=total,
                pct_start=hp["warmup_pct"],
                cycle_momentum=hp["optimizer"] == "sgd",
            )
        elif hp["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            raise ValueError(f"Unknown scheduler {hp['scheduler']!r}: expected 'onecycle', 'cosine' or 'none'.")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
