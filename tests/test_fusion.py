"""The compiled kernels (``manualgrad.fusion``): where compiling fails, and the straight call's check."""

from __future__ import annotations

import random
import sys
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


def _compile_fx_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.compile_fx as compile_fx

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(compile_fx, "compile_fx", broken)


def _inductor_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch._inductor.compile_fx", None)  # `import` raises ImportError


def _fresh_account(monkeypatch: pytest.MonkeyPatch, compile_seconds: float) -> None:
    """FUSION as in a new process (no kernel, no eager seconds spent, no compile done), a compile
    costing ``compile_seconds``; undone after the test."""
    fresh = {"_kernels": {}, "_eager_seconds": {}, "_compiles": [], "compile_seconds": compile_seconds}
    for name, value in fresh.items():
        monkeypatch.setattr(FUSION, name, value)


COMPILER_FAILURES = [
    # (what breaks, the warning it gives)
    pytest.param(_compile_fx_raises, r"no C\+\+ compiler", id="no-cxx-compiler"),
    pytest.param(_inductor_missing, r"torch\._inductor", id="no-inductor"),
]


@pytest.mark.parametrize(("breakage", "message"), COMPILER_FAILURES)
def test_a_failing_compiler_warns_once_and_leaves_eager_results(
    monkeypatch: pytest.MonkeyPatch, breakage: Any, message: str
) -> None:
    """No C++ compiler, no inductor (or any compile failure): one warning, then the eager formulas, same values."""
    for name, value in (("broken", False), ("_kernels", {}), ("_compiles", []), ("compile_seconds", 2.0)):
        monkeypatch.setattr(FUSION, name, value)
    monkeypatch.setattr(FUSION, "min_numel", 0)
    monkeypatch.setattr(FUSION, "patience", 0.0)  # compile at first use
    net = mnn.MLP(8, [16], 4, activation="gelu")
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def grads() -> list[torch.Tensor]:
        return list(torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters())))

    monkeypatch.setattr(FUSION, "enabled", False)
    eager = grads()
    monkeypatch.setattr(FUSION, "enabled", True)
    breakage(monkeypatch)
    with pytest.warns(UserWarning, match=f"fused kernels unavailable.*{message}") as record:
        fallen_back = grads()
        again = grads()
    assert len(record) == 1
    assert FUSION.broken and not FUSION._kernels
    assert FUSION.compile_seconds == 2.0 and not FUSION._compiles  # a failed compile is no measure of one
    for a, b, c in zip(eager, fallen_back, again, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_a_shape_compiles_only_once_it_has_paid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The break-even rule: eager until gain × eager seconds reaches a compile's cost; other shapes
    (a new batch size at every step) never wait on a compile."""
    import manualgrad.fusion as fusion

    clock = [0.0]
    compiled: list[tuple[torch.Size, ...]] = []

    def fake_compile(formula: Any, example: tuple[torch.Tensor, ...]) -> Any:
        compiled.append(tuple(t.shape for t in example))
        return formula  # _official returns a tuple, as a kernel does

    def eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        clock[0] += 1.0  # each eager call "takes" a second
        return a * 2 + b

    monkeypatch.setattr(fusion.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(FUSION, "_compile", fake_compile)
    _fresh_account(monkeypatch, compile_seconds=1.0)
    monkeypatch.setattr(FUSION, "patience", 1.0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    for calls in range(1, 3):  # 0.5 × 0 s, then 0.5 × 1 s: less than the 1 s a compile costs
        FUSION.run(("k",), _official, a, b, gain=0.5, eager=eager)
        assert not compiled and clock[0] == calls
    for n in range(5, 15):  # one-off shapes: eager, however many
        FUSION.run(("k",), _official, torch.randn(n, 3), torch.randn(n, 3), gain=0.5, eager=eager)
    assert not compiled
    (out,) = FUSION.run(("k",), _official, a, b, gain=0.5, eager=eager)  # 0.5 × 2 s: paid
    assert compiled == [(a.shape, b.shape)] and clock[0] == 12
    torch.testing.assert_close(out, a * 2 + b)
    FUSION.run(("k",), _official, a, b, gain=0.5, eager=eager)  # the kernel, no eager call
    assert clock[0] == 12 and len(compiled) == 1
    assert FUSION.compile_seconds == 0.0  # the measured cost of the (fake, instant) compile


def test_calls_are_sampled_until_a_kernel_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any kernel exists, one call in ``sample_every`` (at random) takes the kernel path and counts
    for ``sample_every``; once one exists, or with ``patience = 0``, every call; none while disabled."""
    monkeypatch.setattr(FUSION, "_kernels", {})
    monkeypatch.setattr(FUSION, "patience", 1.0)
    monkeypatch.setattr(FUSION, "sample_every", 8)
    monkeypatch.setattr(FUSION, "_rng", random.Random(0))
    draws = [FUSION.sample() for _ in range(8000)]
    assert set(draws) == {0, 8}
    assert 850 <= draws.count(8) <= 1150  # about one in eight
    assert max(len(run) for run in "".join("x" if d else "." for d in draws).split("x")) < 100  # no call site starves
    monkeypatch.setattr(FUSION, "patience", 0.0)
    assert FUSION.sample() == 1  # compile at first use: every call counts
    monkeypatch.setattr(FUSION, "patience", 1.0)
    monkeypatch.setattr(FUSION, "_kernels", {("k",): _official})
    assert FUSION.sample() == 1
    monkeypatch.setattr(FUSION, "enabled", False)
    assert FUSION.sample() == 0


def test_a_sampled_call_counts_for_the_calls_it_stands_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run(..., calls=8)`` adds eight times the call's eager seconds to the break-even account."""
    import manualgrad.fusion as fusion

    clock = [0.0]

    def eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        clock[0] += 1.0
        return a * 2 + b

    monkeypatch.setattr(fusion.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(FUSION, "_compile", lambda formula, example: formula)
    _fresh_account(monkeypatch, compile_seconds=4.0)
    monkeypatch.setattr(FUSION, "patience", 1.0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    FUSION.run(("k",), _official, a, b, gain=0.5, eager=eager, calls=8)  # 1 s eager, counted as 8 s
    assert not FUSION._kernels
    FUSION.run(("k",), _official, a, b, gain=0.5, eager=eager, calls=8)  # 0.5 × 8 s = 4 s: paid, compiled
    assert len(FUSION._kernels) == 1 and clock[0] == 1.0


def test_a_repeating_shape_still_compiles_when_calls_are_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Library defaults (sampled accounting): a fixed-shape training loop reaches its kernels, same gradients."""
    compiled: list[int] = []

    def fake_compile(formula: Any, example: tuple[torch.Tensor, ...]) -> Any:
        compiled.append(len(example))

        def kernel(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = formula(*args)
            return out if isinstance(out, tuple) else (out,)

        return kernel

    monkeypatch.setattr(FUSION, "_compile", fake_compile)
    _fresh_account(monkeypatch, compile_seconds=1e-5)
    monkeypatch.setattr(FUSION, "min_numel", 0)
    monkeypatch.setattr(FUSION, "_rng", random.Random(0))
    net = mnn.MLP(8, [16], 4)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    monkeypatch.setattr(FUSION, "enabled", False)
    want = torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters()))
    monkeypatch.setattr(FUSION, "enabled", True)
    for _ in range(60):
        got = torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters()))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)
    assert len(compiled) >= 2 and FUSION._kernels  # the stack's forward and backward at least


def test_new_batch_sizes_compile_nothing_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step at a new batch size each time (Poisson sampling) runs the eager formulas."""
    _fresh_account(monkeypatch, compile_seconds=2.0)
    torch.manual_seed(0)
    net = mnn.MLP(64, [128, 128], 10, activation="gelu")
    ref = torch.nn.Sequential(*(m for m in copy_native(net)))
    for n in (33, 47, 64, 81, 100):
        x, y = torch.randn(n, 64), torch.randint(0, 10, (n,))
        got = torch.autograd.grad(MF.cross_entropy(net(x), y), list(net.parameters()))
        want = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert not FUSION._kernels


def copy_native(net: torch.nn.Module) -> list[torch.nn.Module]:
    """torch.nn twins of ``net``'s layers, holding copies of its weights."""
    layers: list[torch.nn.Module] = []
    for m in net:
        if isinstance(m, mnn.Linear):
            twin = torch.nn.Linear(m.in_features, m.out_features)
            twin.load_state_dict(m.state_dict())
            layers.append(twin)
        else:
            layers.append(getattr(torch.nn, type(m).__name__)())
    return layers
