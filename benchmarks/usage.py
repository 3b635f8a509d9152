"""What users meet outside the fixed-shape grid: first calls at new batch sizes, and Poisson-sized training.

Two measurements, each side (torch.nn and manualgrad, the same weights as in :mod:`benchmarks.bench`)
in the same fresh process, the order of the sides alternating from process to process, medians over
the processes (``--repeats``). manualgrad runs with its defaults (``FUSION`` compiles a kernel only
once it has paid for itself), so whatever it compiles is counted.

* **first calls**: the latency of the first call at each of a sequence of fresh batch sizes, in
  eval (``model.eval()`` under ``torch.no_grad()``) and in training (one whole step: ``zero_grad``,
  forward, cross entropy, backward, SGD step); the first size is also the process's first call.
* **Poisson-sized training**: ``--steps`` training steps whose batch sizes are drawn as DP-SGD's
  Poisson sampling draws them (each of ``--dataset`` samples independently, rate ``--rate``), the
  total wall time of each side, compiles included.

Usage::

    python -m benchmarks.usage                      # first calls and Poisson, both tables
    python -m benchmarks.usage --only poisson --repeats 5
    python -m benchmarks.usage --all                # also the hand-composed grid and the app epoch

``--all`` runs the hand-composed grid (``python -m benchmarks.bench --modes hand``) and the app
against a bare loop (``python -m benchmarks.app_loop``) too, each with its own defaults.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import LR, MOMENTUM, build_pair, loss_classes
from manualgrad.fusion import FUSION

__all__ = ["first_calls", "main", "poisson_sizes", "poisson_totals"]

SIDES = ("native", "manualgrad")
FIRST_SIZES = (7, 33, 100, 257, 1000)


@dataclass(frozen=True)
class Setup:
    model: str = "784-1024-1024-10"
    act: str = "relu"

    @property
    def sizes(self) -> list[int]:
        return [int(s) for s in self.model.split("-")]


def _sides(setup: Setup) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Each side's model and loss, the same weights."""
    native, mg = build_pair(setup.sizes, setup.act, torch.device("cpu"))
    native_loss, mg_loss = loss_classes()
    return {"native": (native, native_loss()), "manualgrad": (mg, mg_loss())}


def _trainer(model: nn.Module, loss_fn: nn.Module) -> Callable[[Tensor, Tensor], None]:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(x: Tensor, y: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def first_calls(setup: Setup, mode: str, sizes: Sequence[int], order: Sequence[str]) -> dict[str, list[float]]:
    """Milliseconds of each side's first call at each size (run in this process, sides in ``order``)."""
    sides = _sides(setup)
    gen = torch.Generator().manual_seed(0)
    n_in, n_out = setup.sizes[0], setup.sizes[-1]
    calls: dict[str, Callable[[Tensor, Tensor], None]] = {}
    for name, (model, loss_fn) in sides.items():
        if mode == "eval":
            model.eval()

            def infer(x: Tensor, y: Tensor, model: nn.Module = model) -> None:
                with torch.no_grad():
                    model(x)

            calls[name] = infer
        else:
            calls[name] = _trainer(model, loss_fn)
    out: dict[str, list[float]] = {name: [] for name in SIDES}
    for n in sizes:
        x, y = torch.randn(n, n_in, generator=gen), torch.randint(0, n_out, (n,), generator=gen)
        for name in order:
            t0 = time.perf_counter()
            calls[name](x, y)
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def poisson_sizes(steps: int, dataset: int, rate: float, seed: int = 0) -> list[int]:
    """Batch sizes of Poisson sampling: each of ``dataset`` samples drawn independently with ``rate``."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.binomial(torch.full((steps,), float(dataset)), torch.full((steps,), rate), generator=gen)
    return [int(c) for c in counts]


def poisson_totals(setup: Setup, sizes: Sequence[int], order: Sequence[str]) -> dict[str, float]:
    """Seconds each side takes for the steps at ``sizes`` (this process, sides in ``order``), and
    how many kernels manualgrad compiled meanwhile (``"kernels"``)."""
    sides = _sides(setup)
    gen = torch.Generator().manual_seed(1)
    n_in, n_out = setup.sizes[0], setup.sizes[-1]
    data = [(torch.randn(n, n_in, generator=gen), torch.randint(0, n_out, (n,), generator=gen)) for n in sizes]
    out: dict[str, float] = {}
    kernels_before = len(FUSION._kernels)
    for name in order:
        step = _trainer(*sides[name])
        t0 = time.perf_counter()
        for x, y in data:
            step(x, y)
        out[name] = time.perf_counter() - t0
    out["kernels"] = float(len(FUSION._kernels) - kernels_before)
    return out


def _in_fresh_process(fn: Callable[..., object], *args: object) -> object:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def _order(i: int) -> tuple[str, ...]:
    return SIDES if i % 2 == 0 else SIDES[::-1]


def first_call_table(setup: Setup, mode: str, sizes: Sequence[int], repeats: int) -> str:
    runs = [first_calls_isolated(setup, mode, sizes, _order(i)) for i in range(repeats)]
    lines = [
        f"First call at a fresh batch size, {mode} ({setup.model} {setup.act}; median of {repeats} processes)",
        "",
        "| batch | native ms | manualgrad ms | ratio |",
        "|---|---|---|---|",
    ]
    for j, n in enumerate(sizes):
        nat = statistics.median(r["native"][j] for r in runs)
        mg = statistics.median(r["manualgrad"][j] for r in runs)
        ratio = statistics.median(r["manualgrad"][j] / r["native"][j] for r in runs)
        lines.append(f"| {n}{' (first in process)' if j == 0 else ''} | {nat:.1f} | {mg:.1f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def first_calls_isolated(setup: Setup, mode: str, sizes: Sequence[int], order: Sequence[str]) -> dict[str, list[float]]:
    """:func:`first_calls` in a fresh process."""
    return _in_fresh_process(first_calls, setup, mode, sizes, order)  # type: ignore[return-value]


def poisson_table(setup: Setup, steps: int, dataset: int, rate: float, repeats: int) -> str:
    sizes = poisson_sizes(steps, dataset, rate)
    runs: list[dict[str, float]] = [
        _in_fresh_process(poisson_totals, setup, sizes, _order(i))  # type: ignore[misc]
        for i in range(repeats)
    ]
    nat = statistics.median(r["native"] for r in runs)
    mg = statistics.median(r["manualgrad"] for r in runs)
    ratio = statistics.median(r["manualgrad"] / r["native"] for r in runs)
    kernels = max(r["kernels"] for r in runs)
    return (
        f"Poisson-sized training: {steps} steps, batch ~ Binomial({dataset}, {rate}) "
        f"({min(sizes)}–{max(sizes)}, {len(set(sizes))} distinct), {setup.model} {setup.act}, "
        f"median of {repeats} processes\n\n"
        "| native s | manualgrad s | ratio | kernels compiled |\n|---|---|---|---|\n"
        f"| {nat:.2f} | {mg:.2f} | {ratio:.3f} | {kernels:.0f} |\n"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks.usage", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--models", nargs="+", default=["784-1024-1024-10", "784-256-256-10"])
    p.add_argument("--act", default="relu")
    p.add_argument("--only", nargs="+", choices=("first-call", "poisson"), default=["first-call", "poisson"])
    p.add_argument("--sizes", nargs="+", type=int, default=list(FIRST_SIZES), help="fresh batch sizes, in order")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (default 3)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dataset", type=int, default=60_000)
    p.add_argument("--rate", type=float, default=256 / 60_000)
    p.add_argument("--all", action="store_true", help="also the hand-composed grid and the app-vs-bare-loop epoch")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for model in args.models:
        setup = Setup(model, args.act)
        if "first-call" in args.only:
            for mode in ("eval", "train"):
                print(first_call_table(setup, mode, args.sizes, args.repeats), flush=True)
        if "poisson" in args.only:
            print(poisson_table(setup, args.steps, args.dataset, args.rate, args.repeats), flush=True)
    if args.all:
        import importlib

        from benchmarks import bench

        bench.main(["--modes", "hand", "--no-save"])
        app_loop = importlib.import_module("benchmarks.app_loop")
        app_loop.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
