"""benchmarks/app_loop.py end to end on a tiny run: ABBA pairs, both sides timed, table printed.

No timing is asserted, only the structure of the results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import app_loop


def test_tiny_run_interleaves_and_prints_a_table(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--model.hidden_sizes=[16]", "--trainer.limit_val_batches=1"]
    app_loop.main(["--interleave", "epoch", "--rounds", "2", "--warmup", "1", "--limit-batches", "3", "--", *extra])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 + 1  # header, rule, warm-up + 2 pairs, medians
    assert table[2].startswith("| 0 (warm-up) |") and table[-1].startswith("| **median** |")
    assert "3 batches/epoch" in out


def test_run_returns_one_time_per_epoch_and_side(data_root: Path) -> None:
    result = app_loop.run(rounds=2, warmup=0, limit_batches=2, extra_args=["--model.hidden_sizes=[8]"])
    assert len(result.app) == len(result.bare) == len(result.app_cpu) == len(result.bare_cpu) == 2
    assert all(t > 0 for t in (*result.app, *result.bare, *result.val))
    assert len(result.ratios) == 2 and result.batches == 2


def test_steps_interleaved_pair_every_batch(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--interleave step``: one (app, bare) pair per batch of every epoch, epoch totals, a table."""
    extra = ["--model.hidden_sizes=[8]", "--trainer.limit_val_batches=1"]
    result = app_loop.run_steps(rounds=2, warmup=1, limit_batches=3, extra_args=extra)
    assert [len(pairs) for pairs in result.pairs] == [3, 3, 3]
    assert all(a > 0 and b > 0 for pairs in result.pairs for a, b in pairs)
    assert len(result.app) == len(result.bare) == len(result.val) == 3
    # the app's epoch holds its steps (and more: its epoch-level work); the bare epoch is its steps
    for pairs, app, bare in zip(result.pairs, result.app, result.bare, strict=True):
        assert app >= sum(a for a, _ in pairs) * 0.999
        assert bare >= sum(b for _, b in pairs)
    assert result.step_ratio > 0 and result.epoch_ratio > 0
    app_loop.main(["--rounds", "1", "--warmup", "1", "--limit-batches", "2", "--", *extra])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 1 and table[-1].startswith("| **all measured** |")
