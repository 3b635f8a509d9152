"""What the model sees of an image: its pixels, or data-independent ScatterNet features.

``"scatter"`` follows Tramèr & Boneh (2021), *Differentially Private Learning Needs Better Features
(or Much More Data)*: a fixed wavelet scattering transform (kymatio's ``Scattering2D``, J = 2 scales,
L = 8 angles) turns a 28 × 28 image into 81 channels of 7 × 7 coefficients, each sample's channels
are normalised in groups of three (``group_norm`` without affine parameters: the sample's own
statistics, none of the data set's), and a model trained on top with DP-SGD learns from far fewer,
far better features than pixels. Nothing in the transform is learned or fitted to data, so it costs
no privacy; it is computed once for every image before training.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["FEATURE_SIZES", "Features", "feature_size", "scatter_features"]

Features = Literal["pixels", "scatter"]

#: Scattering scales and angles (Tramèr & Boneh's ScatterNet for MNIST) and the per-sample norm groups.
SCATTER_J, SCATTER_L, SCATTER_GROUPS = 2, 8, 27

#: One image's ScatterNet features: 1 + JL + L²J(J − 1)/2 = 81 channels of (28 / 2^J)² = 7 × 7.
SCATTER_SHAPE = (
    1 + SCATTER_J * SCATTER_L + SCATTER_L**2 * SCATTER_J * (SCATTER_J - 1) // 2,
    28 >> SCATTER_J,
    28 >> SCATTER_J,
)

#: Flattened size of one image's features.
FEATURE_SIZES: dict[str, int] = {"pixels": 28 * 28, "scatter": math.prod(SCATTER_SHAPE)}


def feature_size(features: str) -> int:
    """The flattened feature size of ``features`` (``"pixels"``: 784, ``"scatter"``: 3969)."""
    if features not in FEATURE_SIZES:
        raise ValueError(f"Unknown features {features!r}: expected one of {sorted(FEATURE_SIZES)}")
    return FEATURE_SIZES[features]


def _scattering() -> torch.nn.Module:
    try:
        # kymatio.torch also imports the 3-D frontend, which needs a scipy.special function that
        # scipy 1.17 removed; the 2-D torch frontend is the same class, imported directly.
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as err:
        raise ImportError(
            "features='scatter' needs kymatio (pip install 'kymatio>=0.3', part of manualgrad's [train] extra)"
        ) from err
    return ScatteringTorch2D(J=SCATTER_J, shape=(28, 28), L=SCATTER_L)


@torch.no_grad()
def scatter_features(images: torch.Tensor, batch_size: int = 2000, log_every: float | None = None) -> torch.Tensor:
    """ScatterNet features of uint8 images ``(N, 28, 28)``: float32 ``(N, 81, 7, 7)``.

    ``S(x)``: kymatio's ``Scattering2D(J=2, L=8)`` of the image in [0, 1] (1 zeroth-order, 16 first-
    and 64 second-order channels, each low-passed and subsampled to 7 × 7), then per sample
    ``group_norm(S(x), 27)`` without affine: each group of three channels centred and scaled by its
    own mean and variance. Computed on the images' device in batches of ``batch_size``;
    ``log_every`` seconds, a progress line.
    """
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or images.dtype != torch.uint8:
        raise ValueError(
            f"scatter_features: expected uint8 images of shape (N, 28, 28), but got {images.dtype} of "
            f"shape {tuple(images.shape)}"
        )
    scattering = _scattering().to(images.device)
    out = torch.empty(len(images), *SCATTER_SHAPE, device=images.device)
    start = last = time.perf_counter()
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float().div_(255.0)
        # per-sample normalisation: no statistic of the data set enters the features
        out[i : i + batch_size] = F.group_norm(scattering(x), SCATTER_GROUPS, eps=1e-5)
        if log_every is not None and time.perf_counter() - last >= log_every:
            last = time.perf_counter()
            print(f"ScatterNet features: {i + len(x)}/{len(images)} images, {last - start:.0f} s", flush=True)
    return out
