"""The compiled kernels (``manualgrad.fusion``): where compiling fails, and the straight call's check."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import manualgrad.functional as MF
import manualgrad.nn as mnn
from manualgrad.fusion import FUSION, _direct_call


def _official(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (args[0] * 2 + args[1],)


STRAIGHT_CALL_CASES = [
    # (what the compiled graph's own callable returns, whether it may be called straight)
    pytest.param(lambda args: (args[0] * 2 + args[1],), True, id="same-result"),
    pytest.param(lambda args: (args[0] * 2,), False, id="other-result"),
    pytest.param(lambda args: (args[0] * 2 + args[1], args[0]), False, id="extra-output"),
    pytest.param(lambda args: (args[0].mul_(2).add_(args[1]),), False, id="writes-its-input"),
]


@pytest.mark.parametrize(("run", "straight"), STRAIGHT_CALL_CASES)
def test_straight_call_only_where_it_matches_the_official_call(run: Any, straight: bool) -> None:
    """The straight call replaces the wrapped one only if it returns and writes exactly the same."""
    example = (torch.randn(4, 3), torch.randn(4, 3))
    before = [t.clone() for t in example]
    chosen = _direct_call(_official, [SimpleNamespace(current_callable=run)], example)
    assert (chosen is not _official) is straight
    for t, b in zip(example, before, strict=True):
        assert torch.equal(t, b)  # the check ran on copies
    torch.testing.assert_close(chosen(*example)[0], _official(*example)[0])


def test_no_compiled_graph_keeps_the_official_call() -> None:
    example = (torch.randn(2), torch.randn(2))
    assert _direct_call(_official, [], example) is _official


def test_a_failing_compiler_warns_once_and_leaves_eager_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C++ compiler (or any compile failure): one warning, then the eager formulas, same values."""
    import torch._inductor.compile_fx as compile_fx

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(FUSION, "broken", False)
    monkeypatch.setattr(FUSION, "_kernels", {})
    monkeypatch.setattr(FUSION, "min_numel", 0)
    net = mnn.MLP(8, [16], 4, activation="gelu")
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def grads() -> list[torch.Tensor]:
        return list(torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters())))

    monkeypatch.setattr(FUSION, "enabled", False)
    eager = grads()
    monkeypatch.setattr(FUSION, "enabled", True)
    monkeypatch.setattr(compile_fx, "compile_fx", broken)
    with pytest.warns(UserWarning, match="fused kernels unavailable.*no C\\+\\+ compiler") as record:
        fallen_back = grads()
        again = grads()
    assert len(record) == 1
    assert FUSION.broken and not FUSION._kernels
    for a, b, c in zip(eager, fallen_back, again, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
