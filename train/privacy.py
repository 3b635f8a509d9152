"""Differentially private training (DP-SGD) of the MNIST app: what each part is and who does it.

* **Sampling** (Opacus's semantics): every training example joins a step's batch independently with
  rate ``q = batch_size / N``; batches have a Binomial(N, q) size, an empty batch is a valid step.
  :class:`PoissonBatchSampler` is Opacus's ``UniformWithReplacementSampler``, reseeded per epoch so
  that a resumed run draws the batches the uninterrupted one does.
* **Clipping** (manualgrad): ``manualgrad.clip_per_sample`` around the backward leaves
  ``p.grad = Σ_n min(1, C/‖g_n‖) g_n``, in one backward pass (:meth:`DPSGD.backward`).
* **Noise and scaling** (Opacus): ``DPOptimizerFastGradientClipping`` adds ``N(0, σ²C²)`` to that sum
  and divides by the expected batch size before the wrapped optimizer's step.
* **Accounting** (Opacus): a ``PRVAccountant`` (or ``RDPAccountant``) steps with every optimizer step
  (the optimizer's step hook); ``get_noise_multiplier`` turns a target ε into σ for the run's steps.
  Its history is part of the run's state: logged, checkpointed, restored on resume.

What the guarantee covers: (ε, δ)-DP with respect to adding or removing one example of the training
split (example-level privacy of the 55,000 training images; the validation split is not trained on),
for the released sequence of models, as computed by the accountant from the steps actually taken.
It does not cover the validation and test splits, the hyperparameters (chosen by hand, not privately),
nor attacks on the floating-point noise: the noise comes from torch's generator, reseeded per batch
for exact resume, not from Opacus's ``secure_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

Accountant = Literal["prv", "rdp"]

__all__ = ["DPSGD", "Accountant", "PoissonBatchSampler", "Privacy", "statement"]


@dataclass
class Privacy:
    """The privacy options of a run (``model.privacy`` in a config; ``null``: ordinary training).

    Args:
        target_epsilon: the ε to reach after all the run's steps; σ is chosen for it. Give this or
            ``noise_multiplier``.
        noise_multiplier: σ itself (the noise's std is ``σ · max_grad_norm``); ε follows from it.
        delta: δ of the (ε, δ) guarantee; must be below ``1/N``.
        max_grad_norm: the clipping bound ``C`` of every example's gradient.
        accountant: ``"prv"`` (default, the tighter) or ``"rdp"``: Opacus's accountant.
    """

    target_epsilon: float | None = 3.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: Accountant = "prv"

    def __post_init__(self) -> None:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "privacy: expected exactly one of target_epsilon and noise_multiplier, but got "
                f"target_epsilon={self.target_epsilon} and noise_multiplier={self.noise_multiplier}"
            )
        if self.target_epsilon is not None and not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ValueError(f"privacy: expected target_epsilon > 0, but got {self.target_epsilon}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ValueError(f"privacy: expected noise_multiplier >= 0, but got {self.noise_multiplier}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"privacy: expected max_grad_norm > 0, but got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy: expected 0 < delta < 1, but got {self.delta}")
        if self.accountant not in ("prv", "rdp"):
            raise ValueError(f"privacy: expected accountant 'prv' or 'rdp', but got {self.accountant!r}")


class PoissonBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Opacus's Poisson sampling (``UniformWithReplacementSampler``): ``int(1/q)`` batches an epoch,
    each example in each batch independently with probability ``q``.

    ``set_epoch(e)`` (Lightning calls it every epoch, also after a resume) reseeds the draws with
    ``(seed, e)``: the batches are a function of the seed and the epoch only.
    """

    def __init__(
        self, num_samples: int, sample_rate: float, seed: int, on_epoch: Callable[[int], None] | None = None
    ) -> None:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        self.generator = torch.Generator()
        self.draws = UniformWithReplacementSampler(
            num_samples=num_samples, sample_rate=sample_rate, generator=self.generator
        )
        self.seed, self.on_epoch = seed, on_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    @property
    def sampler(self) -> PoissonBatchSampler:
        """Itself: Lightning calls ``set_epoch`` on a dataloader's ``batch_sampler.sampler``."""
        return self

    def __len__(self) -> int:
        return len(self.draws)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.draws)


class DPSGD:
    """The DP parts of a run: σ, the Opacus optimizer wrapper and the accountant.

    Args:
        privacy: the options.
        num_samples: ``N``, the size of the training split.
        batch_size: the expected batch size ``q·N``.
        steps: the run's optimizer steps (for σ from a target ε).
    """

    def __init__(self, privacy: Privacy, num_samples: int, batch_size: int, steps: int) -> None:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        if not 0 < batch_size <= num_samples:
            raise ValueError(
                f"privacy: expected 0 < batch_size <= {num_samples} (the training split), got {batch_size}"
            )
        if privacy.delta >= 1 / num_samples:
            raise ValueError(
                f"privacy: expected delta < 1/N = {1 / num_samples:.3g} (N = {num_samples} training examples), "
                f"but got delta = {privacy.delta:g}"
            )
        self.privacy = privacy
        self.num_samples, self.batch_size = num_samples, batch_size
        self.sample_rate = batch_size / num_samples
        self.steps = steps
        if privacy.noise_multiplier is not None:
            self.noise_multiplier = privacy.noise_multiplier
        else:
            try:
                self.noise_multiplier = get_noise_multiplier(
                    target_epsilon=privacy.target_epsilon,
                    target_delta=privacy.delta,
                    sample_rate=self.sample_rate,
                    steps=steps,
                    accountant=privacy.accountant,
                )
            except ValueError as err:
                raise ValueError(
                    f"privacy: target_epsilon={privacy.target_epsilon} is unreachable at delta={privacy.delta:g} "
                    f"with sample rate {self.sample_rate:.4g} over {steps} steps ({err}); raise target_epsilon, "
                    "or take fewer or smaller steps"
                ) from err
        self.accountant = create_accountant(privacy.accountant)

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """``optimizer`` wrapped by Opacus: noise ``N(0, σ²C²)`` on the clipped sum, then ``/ (q·N)``; the
        accountant steps with it."""
        from opacus.optimizers import DPOptimizerFastGradientClipping

        dp = DPOptimizerFastGradientClipping(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.privacy.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
        )
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return dp

    def backward(self, model: nn.Module, loss: torch.Tensor) -> None:
        """``loss.backward()`` with manualgrad's one-pass per-sample clipping of ``model``'s gradients."""
        import manualgrad

        with manualgrad.clip_per_sample(model, self.privacy.max_grad_norm, loss_reduction="mean"):
            loss.backward()

    @property
    def steps_taken(self) -> int:
        return sum(steps for _, _, steps in self.accountant.history)

    def epsilon(self) -> float:
        """ε after the steps taken so far (0 before the first)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.privacy.delta))

    def statement(self) -> str:
        """The run's privacy statement, from the accountant's history."""
        return statement(self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the accountant's history and what the statement names."""
        return {
            "accountant": self.privacy.accountant,
            "history": self.accountant.state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.privacy.delta,
            "epsilon": self.epsilon(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not math.isclose(state["noise_multiplier"], self.noise_multiplier, rel_tol=1e-9):
            raise ValueError(
                f"privacy: expected the checkpoint's noise multiplier {state['noise_multiplier']:.6g} to be this "
                f"run's {self.noise_multiplier:.6g}: resume with the same privacy options, epochs and batch size"
            )
        self.accountant.load_state_dict(state["history"])


def statement(state: dict[str, Any]) -> str:
    """The privacy statement of a checkpoint's ``state`` (:meth:`DPSGD.state_dict`): ε recomputed by a
    fresh Opacus accountant from the history of the steps that produced it."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(state["accountant"])
    accountant.load_state_dict(state["history"])
    steps = sum(n for _, _, n in accountant.history)
    epsilon = float(accountant.get_epsilon(delta=state["delta"])) if steps else 0.0
    return (
        f"Privacy: ε = {epsilon:.3f} at δ = {state['delta']:g} ({state['accountant'].upper()} accountant, "
        f"σ = {state['noise_multiplier']:.2f}, sample rate {state['sample_rate']:.3f}, {steps} steps)"
    )
