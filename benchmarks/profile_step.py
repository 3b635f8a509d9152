"""Per-op breakdown of one training-step config, native against manualgrad (torch.profiler).

Both sides are built as in :mod:`benchmarks.bench` (the same weights, the same step), warmed up,
then profiled for ``--steps`` steps each. Printed: each side's top ops by self CPU time, and a
side-by-side table of self time per step by op (sorted by the difference), so one sees where
manualgrad spends more (or less) than torch.nn: GEMMs, elementwise passes, allocations, copies, or
the Python of the autograd Functions (the self time of ``DenseStack``/``DenseStackBackward`` rows).

Usage::

    python -m benchmarks.profile_step --model 784-1024-1024-10 --act relu --batch 1024
    python benchmarks/profile_step.py --model 784-256-256-10 --batch 128 --mode compile --threads 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import (
    MODES,
    Cell,
    Step,
    build_pair,
    loss_classes,
    make_batch,
    make_step,
)

__all__ = ["OpStat", "main", "profile_side"]


@dataclass(frozen=True)
class OpStat:
    """One op's totals over the profiled steps, per step."""

    name: str
    self_cpu_ms: float
    calls: float
    self_device_ms: float


def profile_side(
    step: Step,
    steps: int,
    warmup: int,
    device: str,
    top: int,
    label: str,
) -> dict[str, OpStat]:
    """Profile ``steps`` calls of ``step``; print its top ops; return per-step stats by op name."""
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function("train_step"):
                step()
        if device == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"\n## {label}: top {top} ops by self time, {steps} steps\n")
    print(averages.table(sort_by=sort, row_limit=top, max_name_column_width=60))
    stats: dict[str, OpStat] = {}
    for e in averages:
        device_us = float(getattr(e, "self_device_time_total", 0.0) or 0.0)
        stats[e.key] = OpStat(
            name=e.key,
            self_cpu_ms=e.self_cpu_time_total / 1e3 / steps,
            calls=e.count / steps,
            self_device_ms=device_us / 1e3 / steps,
        )
    return stats


def compare(native: dict[str, OpStat], mg: dict[str, OpStat], top: int) -> str:
    """A markdown table of self CPU ms per step by op, both sides, largest differences first."""
    names = set(native) | set(mg)
    zero = OpStat("", 0.0, 0.0, 0.0)

    def diff(n: str) -> float:
        return mg.get(n, zero).self_cpu_ms - native.get(n, zero).self_cpu_ms

    columns = ["op", "native self ms/step", "mg self ms/step", "mg - native"]
    columns += ["native calls/step", "mg calls/step"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for n in sorted(names, key=lambda n: -abs(diff(n)))[:top]:
        a, b = native.get(n, zero), mg.get(n, zero)
        ms = f"{a.self_cpu_ms:.3f} | {b.self_cpu_ms:.3f} | {diff(n):+.3f}"
        lines.append(f"| {n} | {ms} | {a.calls:g} | {b.calls:g} |")
    total_n = sum(s.self_cpu_ms for k, s in native.items() if k != "train_step")
    total_m = sum(s.self_cpu_ms for k, s in mg.items() if k != "train_step")
    lines.append(
        f"| **all ops** | {total_n:.3f} | {total_m:.3f} | {total_m - total_n:+.3f} | "
        f"{sum(s.calls for s in native.values()):g} | {sum(s.calls for s in mg.values()):g} |"
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="benchmarks.profile_step", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="784-1024-1024-10", help="layer sizes")
    p.add_argument("--act", default="relu")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--mode", default="eager", choices=MODES)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=20, help="profiled steps per side (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Profile both sides of one config and print the comparison."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cell = Cell(args.device, args.model, args.act, args.batch, args.mode)
    device = torch.device(args.device)
    native, mg = build_pair(cell.sizes, cell.act, device, hand=args.mode == "hand")
    x, y = make_batch(cell, device)
    native_loss, mg_loss = loss_classes()
    compiled = args.mode == "compile"
    native_step, _ = make_step(native, native_loss(), x, y, compiled)
    mg_step, _ = make_step(mg, mg_loss(), x, y, compiled)
    print(f"# {cell.key}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    # A throwaway session: the profiler's own first-use costs would land on the first side.
    with profile(activities=[ProfilerActivity.CPU]):
        native_step()
        mg_step()
    stats_n = profile_side(native_step, args.steps, args.warmup, args.device, args.top, "native")
    stats_m = profile_side(mg_step, args.steps, args.warmup, args.device, args.top, "manualgrad")
    print("\n## self CPU time per step by op, largest differences first\n")
    print(compare(stats_n, stats_m, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
