"""The benchmark suite: quick mode end to end on a tiny config, and saved-bytes counting by hand.

No timing is asserted, only the structure of the results and the byte counts.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manualgrad
import manualgrad.nn as mnn
from benchmarks import bench

F32 = 4  # bytes per float32


def test_quick_run_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--models", "20-16-5", "--acts", "relu", "--batches", "8"]
    argv += ["--devices", "cpu", "--out-dir", str(tmp_path)]
    assert bench.main(argv) == 0

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(bench.HEADER)
    assert len(table) == 3  # header, rule, the one quick cell
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert len(row) == len(bench.HEADER)
    assert row[:5] == ["cpu", "20-16-5", "relu", "8", "eager"]

    (md,) = tmp_path.glob("*-cpu-eager.md")
    (js,) = tmp_path.glob("*-cpu-eager.json")
    assert md.stem == js.stem
    assert table[2] in md.read_text()
    data = json.loads(js.read_text())
    meta = data["meta"]
    for key in ("date", "command", "torch", "cpu_model", "threads", "device"):
        assert meta[key], key
    assert meta["torch"] == torch.__version__
    assert "--quick" in meta["command"]

    (r,) = data["rows"]
    times = r["times_ms"]
    assert set(times) == set(bench.SIDES)
    assert r["rounds"] >= 5
    assert all(len(t) == r["rounds"] and min(t) > 0 for t in times.values())
    assert r["native_ms"] == statistics.median(times["native"])
    ratios = [m / n for m, n in zip(times["manualgrad"], times["native"], strict=True)]
    assert r["ratio"] == pytest.approx(statistics.median(ratios))
    # Native saves the input (8x20) and the ReLU output (8x16; the 2nd addmm saves it too)...
    assert r["saved_native"] == 8 * (20 + 16) * F32
    # ... and the 2nd weight only: the 1st layer's input needs no grad, so no δW there.
    assert r["saved_params_native"] == 5 * 16 * F32
    assert r["saved_mg"] >= r["saved_native"]  # x and the hidden activation are needed by any rule
    assert r["bytes_ratio"] == pytest.approx(r["saved_mg"] / r["saved_native"])


def _linear_relu(twin: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    return manualgrad.convert(net) if twin else net


@pytest.mark.parametrize("twin", [False, True], ids=["native", "manualgrad"])
def test_saved_bytes_linear_relu(twin: bool) -> None:
    net = _linear_relu(twin)
    assert isinstance(net, mnn.Sequential) == twin
    x = torch.randn(3, 6)
    saved = bench.saved_bytes(lambda: net(x), net.parameters())
    # The backward needs X (for δᵀX) and ReLU's output (its derivative). W is needed only for
    # δW, the input's gradient, which is not wanted here: torch does not save it.
    assert saved.activations == 3 * 6 * F32 + 3 * 4 * F32
    if not twin:
        assert saved.parameters == 0
    assert saved.parameters in (0, 4 * 6 * F32)  # keeping W costs no memory: it is a parameter


def test_saved_bytes_counts_each_storage_once() -> None:
    w = torch.randn(5, 5, requires_grad=True)
    x = torch.randn(2, 5)
    xx = torch.cat([x, x]).requires_grad_()  # 4x5
    # mm saves both operands; the second mm saves a view of the same storage again.
    saved = bench.saved_bytes(lambda: xx.mm(w).sum() + xx[:2].mm(w).sum(), [w])
    assert saved.tensors == 4
    assert saved.activations == 4 * 5 * F32
    assert saved.parameters == 5 * 5 * F32


def test_only_patterns() -> None:
    grid = bench.cells(["cpu"], bench.MODELS, bench.ACTIVATIONS, bench.BATCHES, bench.MODES)
    assert len(grid) == 2 * 4 * 2 * 3
    picked = bench.cells(
        ["cpu"], bench.MODELS, bench.ACTIVATIONS, bench.BATCHES, bench.MODES,
        ["784-1024-1024-10:relu:1024:eager"],
    )  # fmt: skip
    assert [c.key for c in picked] == ["784-1024-1024-10:relu:1024:eager:cpu"]
    assert len([c for c in grid if c.matches("*:gelu")]) == 12
    assert len([c for c in grid if c.matches("::128::cpu")]) == 24
    with pytest.raises(ValueError):
        grid[0].matches("a:b:c:d:e:f")


def test_gemm_bound_runs_the_step_shapes() -> None:
    native, mg = bench.build_pair([12, 8, 3], "tanh", torch.device("cpu"))
    x = torch.randn(4, 12)
    bench.check_same_outputs(native, mg, x)  # the same weights on both sides
    gemms = bench.make_gemm_bound(native, x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gemms()
    names = [e.name for e in prof.events() if e.name in ("aten::addmm", "aten::mm")]
    # 2 forward addmm; backward: grad_weight of both layers, grad_input of the second only.
    assert names == ["aten::addmm", "aten::addmm", "aten::mm", "aten::mm", "aten::mm"]


def test_hand_mode_composes_mnn_layers_by_hand() -> None:
    """``--modes hand``: a plain nn.Sequential of mnn layers (no fusion), the native weights."""
    native, hand = bench.build_pair([12, 8, 3], "gelu", torch.device("cpu"), hand=True)
    assert type(hand) is nn.Sequential
    assert [type(m) for m in hand] == [mnn.Linear, mnn.GELU, mnn.Linear]
    bench.check_same_outputs(native, hand, torch.randn(4, 12))


def test_usage_benchmark_parts_on_a_tiny_model() -> None:
    """benchmarks.usage: Poisson batch sizes and the first-call / Poisson measurements (structure only)."""
    from benchmarks import usage

    sizes = usage.poisson_sizes(steps=2000, dataset=1000, rate=0.05)
    assert statistics.mean(sizes) == pytest.approx(50, rel=0.05)  # Binomial(1000, 0.05): mean 50
    assert statistics.pvariance(sizes) == pytest.approx(47.5, rel=0.15)  # variance N q (1 - q)
    setup = usage.Setup("12-8-3", "tanh")
    calls = usage.first_calls(setup, "train", [3, 5], usage.SIDES)
    assert set(calls) == set(usage.SIDES) and all(len(v) == 2 and min(v) > 0 for v in calls.values())
    totals = usage.poisson_totals(setup, [3, 4, 0, 5], usage.SIDES[::-1])
    assert totals["native"] > 0 and totals["manualgrad"] > 0 and totals["kernels"] == 0


def test_floor_variants_train_the_same_model(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.floor: every variant, the minimal twins included, gives native's gradients on the same
    weights (so the floor it measures is the same computation); the table lists every variant."""
    from benchmarks import floor

    native = bench.build_native([12, 9, 7, 4], "relu", torch.device("cpu"))
    x, y = torch.randn(6, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    want = None
    for variant in floor.VARIANTS:
        model, loss = floor.build(variant, native)
        loss(model(x), y).backward()
        grads = [p.grad for p in model.parameters()]
        if want is None:
            want = grads
        assert len(grads) == len(want), variant
        for got, ref in zip(grads, want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=variant)
    # the norms floor forms what per_sample's .norms holds (its b_n carry the mean's 1/N)
    mg = manualgrad.convert(copy.deepcopy(native))
    with manualgrad.per_sample(mg) as ps:
        F.cross_entropy(mg(x), y).backward()
    assert floor.MinimalMLPNorms.norms is not None
    torch.testing.assert_close(floor.MinimalMLPNorms.norms * len(y), ps.norms, rtol=1e-5, atol=1e-6)
    assert floor.main(["--model", "12-9-7-4", "--batch", "6", "--rounds", "2", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == list(floor.VARIANTS)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / ".git").exists(), reason="needs the git history")
@pytest.mark.parametrize("mode", ["hand", "fused", "norms", "clip"])
def test_ab_runs_a_revision_beside_the_working_tree(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.ab``: HEAD's package imported under its own name beside the working tree's, three
    sides timed; the table names each side once with a positive time and native's ratio 1."""
    from benchmarks import ab

    argv = ["--rev", "HEAD", "--mode", mode, "--model", "20-16-5", "--batch", "8", "--steps", "3", "--threads", "1"]
    assert ab.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    cells = {r.strip("|").split("|")[0].strip(): r.strip("|").split("|")[1:] for r in rows[1:]}
    assert list(cells) == ["native", "HEAD", "working tree"]
    assert all(float(us) > 0 for us, _ in cells.values())
    assert float(cells["native"][1]) == 1.0
    assert "manualgrad_HEAD" in sys.modules and sys.modules["manualgrad_HEAD"] is not manualgrad
