"""Per-sample gradients and clipping: manualgrad against Opacus and torch.func, each as a ratio to a plain native step.

Every side is one training step of the same MLP (the weights of :mod:`benchmarks.bench`), cross
entropy, SGD with momentum; ratio = median over rounds of (side / plain native step), the two
interleaved in one process (each round in the other order), every cell in a fresh process:

* ``norms``: manualgrad, ``per_sample(model)`` around ``backward`` (``.norms`` only);
* ``clip``: manualgrad, ``clip_per_sample(model, C)`` around ``backward``, then ``p.grad / B`` (DP-SGD's
  flat clipping and scaling without the noise; unscaled, the summed step diverges into subnormal
  numbers within a few dozen steps and every op slows down);
* ``grad_sample``: manualgrad, ``per_sample(model, "grad_sample")``;
* ``opacus-hooks``: Opacus ``GradSampleModule`` + ``DPOptimizer`` (noise 0, flat clipping C);
* ``opacus-ghost``: Opacus ghost clipping (``GradSampleModuleFastGradientClipping``,
  ``DPOptimizerFastGradientClipping``, ``DPLossFastGradientClipping``; noise 0);
* ``torch.func``: ``vmap(grad(functional_call))`` per-sample gradients, their norms, the clipped sum.

Peak memory: each side again in its own fresh process, the growth of the process's peak resident
set over a few steps past the set-up (``ru_maxrss``), beside the plain native step's.

Usage::

    python -m benchmarks.per_sample                       # the grid of the README
    python -m benchmarks.per_sample --cells 784-256-256-10:256 --sides clip norms --rounds 30
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import manualgrad
from benchmarks.bench import LR, MOMENTUM, Budget, build_native, cpu_model, measure

__all__ = ["SIDES", "main", "make_side"]

SIDES = ("norms", "clip", "grad_sample", "opacus-hooks", "opacus-ghost", "torch.func")
CELLS = ("784-256-256-10:256", "784-1024-1024-10:256", "784-1024-1024-10:1024")
CLIP = 1.0
Step = Callable[[], None]


def _sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def make_side(side: str, native: nn.Module, x: Tensor, y: Tensor) -> Step:
    """One training step of ``side`` on a deep copy of ``native`` (``"native"``: the plain step)."""
    model = copy.deepcopy(native)
    batch = x.shape[0]  # Opacus's expected batch size
    if side in ("norms", "clip", "grad_sample"):
        model = manualgrad.convert(model)
    if side in ("native", "norms", "clip", "grad_sample"):
        opt = _sgd(model)

        def context() -> object:
            if side == "clip":
                return manualgrad.clip_per_sample(model, CLIP)
            if side == "grad_sample":
                return manualgrad.per_sample(model, "grad_sample")
            return manualgrad.per_sample(model)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if side == "native":
                loss.backward()
            else:
                with context():  # type: ignore[attr-defined]
                    loss.backward()
            if side == "clip":  # the clipped sum over the expected batch, as DP-SGD's optimizer scales it
                torch._foreach_div_([p.grad for p in model.parameters()], batch)  # type: ignore[misc]
            opt.step()

        return step
    if side == "opacus-hooks":
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        gsm = GradSampleModule(model)
        dp = DPOptimizer(_sgd(model), noise_multiplier=0.0, max_grad_norm=CLIP, expected_batch_size=batch)

        def hooks_step() -> None:
            dp.zero_grad(set_to_none=True)
            F.cross_entropy(gsm(x), y).backward()
            dp.step()

        return hooks_step
    if side == "opacus-ghost":
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(model, max_grad_norm=CLIP, use_ghost_clipping=True)
        dp = DPOptimizerFastGradientClipping(
            _sgd(model), noise_multiplier=0.0, max_grad_norm=CLIP, expected_batch_size=batch
        )
        criterion = DPLossFastGradientClipping(gsm, dp, nn.CrossEntropyLoss())

        def ghost_step() -> None:
            dp.zero_grad(set_to_none=True)
            criterion(gsm(x), y).backward()
            dp.step()

        return ghost_step
    if side == "torch.func":
        from torch.func import functional_call, grad, vmap

        opt = _sgd(model)
        names = [n for n, _ in model.named_parameters()]

        def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        per_sample_grads = vmap(grad(one), in_dims=(None, 0, 0))

        def func_step() -> None:
            opt.zero_grad(set_to_none=True)
            params = {n: p.detach() for n, p in model.named_parameters()}
            g = per_sample_grads(params, x, y)
            norms = torch.stack([g[n].flatten(1).norm(dim=1) for n in names], 1).norm(dim=1)
            c = (CLIP / (norms + 1e-6)).clamp(max=1.0)
            for n, p in model.named_parameters():
                p.grad = torch.einsum("n,n...->...", c, g[n]) / batch
            opt.step()

        return func_step
    raise ValueError(f"unknown side {side!r}; expected one of {('native', *SIDES)}")


def _setup(cell: str) -> tuple[nn.Module, Tensor, Tensor]:
    model, batch = cell.split(":")
    sizes = [int(s) for s in model.split("-")]
    native = build_native(sizes, "relu", torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    return (
        native,
        torch.randn(int(batch), sizes[0], generator=gen),
        torch.randint(0, sizes[-1], (int(batch),), generator=gen),
    )


def time_side(cell: str, side: str, rounds: int, seconds: float, threads: int | None = None) -> dict[str, float]:
    """``side`` against the plain native step, interleaved: median ratio and each side's median ms."""
    if threads is not None:
        torch.set_num_threads(threads)
    native, x, y = _setup(cell)
    steps = {"native": make_side("native", native, x, y), side: make_side(side, native, x, y)}
    t0 = time.perf_counter()
    steps[side]()
    cost = time.perf_counter() - t0
    n_rounds = max(5, min(rounds, int(seconds / max(cost, 1e-4))))
    times, _ = measure(
        steps, "cpu", Budget(rounds=n_rounds, min_time=0.0, max_rounds=n_rounds, warmup=2, sample_ms=cost * 1e3)
    )
    ratio = statistics.median(a / b for a, b in zip(times[side], times["native"], strict=True))
    return {"ratio": ratio, "native_ms": statistics.median(times["native"]), "side_ms": statistics.median(times[side])}


def peak_growth(cell: str, side: str, threads: int | None = None, steps: int = 3) -> float:
    """MiB by which ``side``'s steps raise the process's peak resident set past its set-up."""
    if threads is not None:
        torch.set_num_threads(threads)
    native, x, y = _setup(cell)
    step = make_side(side, native, x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _fresh(fn: Callable[..., object], *args: object) -> object:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def table(
    cells: Sequence[str], sides: Sequence[str], rounds: int, seconds: float, memory: bool, threads: int | None
) -> str:
    head = "| model, batch | native ms | " + " | ".join(sides) + " |"
    lines = [head, "|" + "---|" * (len(sides) + 2)]
    mem_lines = ["| model, batch | native | " + " | ".join(sides) + " |", "|" + "---|" * (len(sides) + 2)]
    for cell in cells:
        results = {s: _fresh(time_side, cell, s, rounds, seconds, threads) for s in sides}
        native_ms = statistics.median(r["native_ms"] for r in results.values())  # type: ignore[index]
        lines.append(
            f"| {cell.replace(':', ', ')} | {native_ms:.1f} | "
            + " | ".join(f"{results[s]['ratio']:.2f}×" for s in sides)  # type: ignore[index]
            + " |"
        )
        print(lines[-1], flush=True)
        if memory:
            mib = {s: _fresh(peak_growth, cell, s, threads) for s in ("native", *sides)}
            mem_lines.append(
                f"| {cell.replace(':', ', ')} | " + " | ".join(f"{mib[s]:.0f}" for s in ("native", *sides)) + " |"
            )
            print(mem_lines[-1], flush=True)
    out = "Step time / plain native step (median ratio):\n\n" + "\n".join(lines)
    if memory:
        out += "\n\nPeak memory growth over the steps, MiB (`ru_maxrss`):\n\n" + "\n".join(mem_lines)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks.per_sample", description=__doc__.split("\n")[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), help="MODEL:BATCH, e.g. 784-256-256-10:256")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--rounds", type=int, default=40, help="most rounds per side (default 40)")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per side, sets the rounds of slow sides")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) in every process")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    print(f"# per-sample grid, torch {torch.__version__}, {cpu_model()}, {threads} threads\n", flush=True)
    print(table(args.cells, args.sides, args.rounds, args.seconds, not args.no_memory, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
