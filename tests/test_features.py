"""ScatterNet features (train/features.py): kymatio's transform, per-sample normalisation, the data
module's ``features`` option and the command line's link to the model's input size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from train import data as data_module
from train.data import MNISTDataModule, load_mnist
from train.features import FEATURE_SIZES, feature_size, scatter_features
from train.mnist import cli_main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(data_root: Path) -> torch.Tensor:
    return load_mnist(data_root, train=False)[0][:48]


def test_feature_sizes() -> None:
    assert feature_size("pixels") == 784 and feature_size("scatter") == 81 * 7 * 7 == FEATURE_SIZES["scatter"]
    with pytest.raises(ValueError, match=r"Unknown features 'wavelets': expected one of \['pixels', 'scatter'\]"):
        feature_size("wavelets")


def test_scatter_features_are_kymatio_then_per_sample_group_norm(images: torch.Tensor) -> None:
    """S(x) of the image in [0, 1] (kymatio's Scattering2D, J = 2, L = 8), each sample's groups of three
    channels centred and scaled by their own statistics."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    got = scatter_features(images, batch_size=20)
    assert got.shape == (48, 81, 7, 7) and got.dtype == torch.float32 and torch.isfinite(got).all()
    s = ScatteringTorch2D(J=2, shape=(28, 28), L=8)(images.float() / 255.0).double()
    groups = s.reshape(48, 27, 3 * 49)
    mean, var = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
    want = ((groups - mean) / (var + 1e-5).sqrt()).reshape(48, 81, 7, 7)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_scatter_features_are_per_sample(images: torch.Tensor) -> None:
    """No statistic of the batch enters an image's features: alone or among others, the same values
    (what makes them free in privacy terms)."""
    together = scatter_features(images)
    alone = torch.cat([scatter_features(images[i : i + 1]) for i in (0, 17, 47)])
    torch.testing.assert_close(alone, together[[0, 17, 47]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        pytest.param(
            lambda x: x.float(), r"expected uint8 images of shape \(N, 28, 28\), but got torch.float32", id="dtype"
        ),
        pytest.param(lambda x: x[:, :27], r"but got torch.uint8 of shape \(48, 27, 28\)", id="shape"),
    ],
)
def test_scatter_features_bad_input(images: torch.Tensor, bad: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scatter_features(bad(images))


def test_scatter_features_refuse_augmentation() -> None:
    with pytest.raises(
        ValueError, match=r"features='scatter' are computed once before training: expected shift_augment"
    ):
        MNISTDataModule(features="scatter", shift_augment=1)
    with pytest.raises(ValueError, match=r"augment_multiplicity=1, but got shift_augment=0 and augment_multiplicity=2"):
        MNISTDataModule(features="scatter", augment_multiplicity=2)
    with pytest.raises(ValueError, match="Unknown features 'edges'"):
        MNISTDataModule(features="edges")  # type: ignore[arg-type]


@pytest.fixture
def few_images(monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    """The data module loads 1,200 training and 300 test images (features for all 70,000 take minutes)."""
    real = load_mnist

    def load(root: Any, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = real(root, train)
        return (x[:1200], y[:1200]) if train else (x[:300], y[:300])

    monkeypatch.setattr(data_module, "load_mnist", load)


def test_datamodule_serves_scatter_features(few_images: None, data_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_root), features="scatter", val_size=200)
    dm.setup()
    assert dm.in_features == 3969
    assert dm.datasets["train"].images.shape == (1000, 81, 7, 7) and dm.datasets["test"].images.shape == (300, 81, 7, 7)
    test_images, _ = data_module.load_mnist(data_root, train=False)
    torch.testing.assert_close(dm.datasets["test"].images[:5], scatter_features(test_images[:5]), rtol=1e-5, atol=1e-5)


def test_dp_config_trains_on_scatter_features(few_images: None, tmp_path: Path, capsys: Any) -> None:
    """``configs/dp.yaml`` end to end on a slice of MNIST: the command line sets the model's input size
    from the data's features (3969), DP-SGD runs, the last lines are the privacy statement and the accuracy."""
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "dp.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.max_epochs=2",
        "--data.val_size=200",
        "--data.batch_size=200",
    ]
    cli = cli_main(args)
    assert cli.model.hparams["in_features"] == 3969 and cli.model.hparams["hidden_sizes"] == [256]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("Privacy: ε = ") and lines[-1].startswith("Test accuracy: ")
    assert float(lines[-1].split(": ")[1]) > 0.5  # an MLP on ScatterNet features learns in 10 noisy steps
