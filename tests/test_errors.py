"""Bad input gets torch-style errors: what was expected, what came."""

from __future__ import annotations

import pytest
import torch

import manualgrad.functional as MF
import manualgrad.nn as mnn

CASES = [
    pytest.param(
        lambda: mnn.Linear(3, 4)(torch.randn(2, 5)),
        RuntimeError,
        r"expected input of shape \[\*, 3\] to match weight of shape \[4, 3\], but got input of shape \[2, 5\]",
        id="linear-shape",
    ),
    pytest.param(
        lambda: mnn.Linear(3, 4)(torch.randn(2, 3, dtype=torch.float64)),
        RuntimeError,
        r"expected input and weight to have the same dtype, but got input of dtype torch.float64 "
        r"and weight of dtype torch.float32",
        id="linear-dtype",
    ),
    pytest.param(
        lambda: mnn.Linear(3, 4)(torch.randn(2, 3, device="meta")),
        RuntimeError,
        r"expected all tensors to be on the same device, but got input on meta and weight on cpu",
        id="linear-device",
    ),
    pytest.param(
        lambda: MF.linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(5)),
        RuntimeError,
        r"expected bias of shape \[4\] to match weight of shape \[4, 3\], but got bias of shape \[5\]",
        id="linear-bias",
    ),
    pytest.param(
        lambda: MF.linear(torch.randn(2, 3), torch.randn(4, 3, 1)),
        RuntimeError,
        r"expected weight to be 2-D \(out_features, in_features\), but got weight of shape \[4, 3, 1\]",
        id="linear-weight-dim",
    ),
    pytest.param(
        lambda: mnn.Sequential(mnn.Linear(3, 4), mnn.ReLU(), mnn.Linear(5, 2))(torch.randn(2, 3)),
        RuntimeError,
        r"expected input of shape \[\*, 5\] to match weight of shape \[2, 5\], but got input of shape \[2, 4\]",
        id="stack-inner-shape",
    ),
    pytest.param(
        lambda: mnn.Bilinear(3, 2, 4)(torch.randn(5, 3), torch.randn(4, 2)),
        RuntimeError,
        r"same leading dimensions, but got input1 of shape \[5, 3\] and input2 of shape \[4, 2\]",
        id="bilinear-batch",
    ),
    pytest.param(
        lambda: mnn.Bilinear(3, 2, 4)(torch.randn(5, 3), torch.randn(5, 3)),
        RuntimeError,
        r"expected inputs of shapes \[\*, 3\] and \[\*, 2\] to match weight of shape \[4, 3, 2\]",
        id="bilinear-features",
    ),
    pytest.param(
        lambda: mnn.GELU("fast")(torch.randn(2)),
        ValueError,
        r"expected approximate to be 'none' or 'tanh', but got approximate='fast'",
        id="gelu-option",
    ),
    pytest.param(
        lambda: MF.gelu(torch.randn(2), approximate="fast"),
        ValueError,
        r"expected approximate to be 'none' or 'tanh'",
        id="gelu-functional-option",
    ),
    pytest.param(
        lambda: MF.softplus(torch.randn(2), beta=0),
        ValueError,
        r"expected beta to be non-zero",
        id="softplus-beta",
    ),
    pytest.param(
        lambda: MF.celu(torch.randn(2), alpha=0.0),
        ValueError,
        r"expected alpha to be non-zero",
        id="celu-alpha",
    ),
    pytest.param(
        lambda: MF.dropout(torch.randn(2), p=-0.1),
        ValueError,
        r"dropout probability has to be between 0 and 1, but got -0.1",
        id="dropout-p",
    ),
    pytest.param(
        lambda: mnn.MLP(4, [4], 2, activation="swish"),
        ValueError,
        r"expected activation to be one of \[.*\], but got 'swish'",
        id="mlp-activation",
    ),
    pytest.param(
        lambda: MF.relu("x"),
        TypeError,
        r"relu\(\): argument 'input' must be Tensor, not str",
        id="relu-type",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), CASES)
def test_error(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_failed_call_loses_nothing() -> None:
    """A refused call leaves the module and the input as they were."""
    m = mnn.Linear(3, 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 5)
    x0 = x.clone()
    with pytest.raises(RuntimeError):
        m(x)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert torch.equal(x, x0)
