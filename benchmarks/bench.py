"""Training-step benchmark: manualgrad against torch.nn on the same MLP with the same weights.

Every cell (device, model, activation, batch, mode) builds a ``torch.nn.Sequential`` MLP,
deep-copies it and ``manualgrad.convert``-s the copy, so both sides start from the very same
weights. One training step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward
and an SGD step (lr 0.01, momentum 0.9), on a fixed preloaded batch.

The sides run interleaved in one process, round after round, and the rounds take the orders of the
sides in turn (all permutations: with native, manualgrad and the GEMM bound, 6 orders), so slow
drifts of the machine hit them alike and each side runs right after each other side equally often.
(A step run right after the GEMM bound's cache-flushing matrix products is measurably slower on a
small CPU; a fixed order such as ABBA would put one side after it more often than the other.)
Each timed sample runs ``inner`` steps back to back (calibrated once per cell so a sample lasts
about ``--sample-ms``). Each cell runs in a fresh process (``--no-isolate``: all in this one), so
no cell inherits the allocator state the earlier ones left. Reported per cell:

* the median of the per-round ratios manualgrad/native and each side's median step time;
* a GEMM-only lower bound: just the matrix products a step must do (per Linear the forward
  ``addmm``, the backward ``δᵀX`` and ``δW``; no ``δW`` for the first layer, whose input needs
  no gradient), timed in the same loop, and the median per-round ratio manualgrad/GEMM-bound;
* the bytes each side's forward saves for backward (distinct storages, the parameters' excluded).

Usage::

    python -m benchmarks.bench              # the full grid (also: python benchmarks/bench.py)
    python -m benchmarks.bench --quick      # smoke run: one small cell, a few rounds
    python -m benchmarks.bench --only 784-1024-1024-10:relu:1024:eager --rounds 30

Results go to ``benchmarks/results/<date>-<device>-<modes>.md`` (the table) and ``.json`` (every per-round
time and the machine's description).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import datetime as dt
import gc
import itertools
import json
import math
import multiprocessing
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import manualgrad
import manualgrad.nn as mnn
from manualgrad.activations import ACTIVATIONS as _REGISTRY
from manualgrad.fusion import FUSION

__all__ = [
    "Cell",
    "Row",
    "SavedBytes",
    "Step",
    "build_pair",
    "cells",
    "main",
    "make_gemm_bound",
    "make_step",
    "run_cell",
    "saved_bytes",
]

MODELS: tuple[str, ...] = ("784-256-256-10", "784-1024-1024-10")
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh", "gelu")
BATCHES: tuple[int, ...] = (128, 1024)
MODES: tuple[str, ...] = ("eager", "compile", "hand")
"""``eager``: ``manualgrad.convert`` (fused ``mnn.Sequential``); ``compile``: both sides
``torch.compile``-d; ``hand``: a plain ``nn.Sequential`` of ``mnn`` layers, composed by hand (no fusion)."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIDES: tuple[str, ...] = ("native", "manualgrad", "gemm")
LR, MOMENTUM = 0.01, 0.9

Step = Callable[[], None]


# ---------------------------------------------------------------------------------------------
# What is measured.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration."""

    device: str
    model: str  # layer sizes, "784-256-256-10"
    act: str
    batch: int
    mode: str  # "eager", "compile" or "hand"

    @property
    def sizes(self) -> list[int]:
        """The layer widths, input first."""
        return [int(s) for s in self.model.split("-")]

    @property
    def key(self) -> str:
        """``model:act:batch:mode:device``, what ``--only`` patterns match."""
        return f"{self.model}:{self.act}:{self.batch}:{self.mode}:{self.device}"

    def matches(self, pattern: str) -> bool:
        """Whether ``pattern`` (``model:act:batch:mode:device``, ``*``/empty/missing = any) fits."""
        own = self.key.split(":")
        fields = pattern.split(":")
        if len(fields) > len(own):
            raise ValueError(f"--only pattern {pattern!r} has more than {len(own)} ':'-fields")
        return all(f in ("", "*", o) for f, o in zip(fields, own, strict=False))


@dataclass(frozen=True)
class SavedBytes:
    """What one forward saves for backward: distinct storages, parameters apart from the rest."""

    activations: int  # bytes of saved storages that are no parameter's (the input batch included)
    parameters: int  # bytes of saved parameter storages
    tensors: int  # how many tensors were saved (before de-duplicating storages)


@dataclass
class Row:
    """One cell's result; ``times_ms`` holds every per-round per-step time, by side."""

    device: str
    model: str
    act: str
    batch: int
    mode: str
    native_ms: float
    manualgrad_ms: float
    ratio: float  # median over rounds of manualgrad/native
    gemm_ms: float
    mg_over_gemm: float  # median over rounds of manualgrad/GEMM-bound
    saved_native: int  # activation bytes saved for backward (parameters excluded)
    saved_mg: int
    bytes_ratio: float
    saved_params_native: int
    saved_params_mg: int
    rounds: int
    inner: int
    times_ms: dict[str, list[float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Models, steps and the GEMM bound.
# ---------------------------------------------------------------------------------------------


def build_native(
    sizes: Sequence[int],
    act: str,
    device: torch.device,
    seed: int = 0,
) -> nn.Sequential:
    """``nn.Sequential(Linear, act, Linear, act, ..., Linear)`` with seeded weights."""
    torch.manual_seed(seed)
    act_cls: type[nn.Module] = getattr(nn, _REGISTRY[act].module)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out, device=device))
        if i < len(sizes) - 2:
            layers.append(act_cls())
    return nn.Sequential(*layers)


def build_hand(native: nn.Sequential, layers_from: Any = mnn) -> nn.Sequential:
    """``native`` composed by hand from ``mnn`` layers: a plain ``nn.Sequential`` (no fusion), the same
    weights (``layers_from``: the ``manualgrad.nn`` to take them from, e.g. another build's)."""
    layers: list[nn.Module] = []
    for m in native:
        if isinstance(m, nn.Linear):
            twin = layers_from.Linear(m.in_features, m.out_features, m.bias is not None, device=m.weight.device)
            twin.load_state_dict(m.state_dict())
            layers.append(twin)
        else:
            layers.append(getattr(layers_from, type(m).__name__)())
    return nn.Sequential(*layers)


def build_pair(sizes: Sequence[int], act: str, device: torch.device, hand: bool = False) -> tuple[nn.Module, nn.Module]:
    """The native MLP and its ``manualgrad.convert``-ed deep copy (the same weights); with ``hand``,
    the copy is composed by hand instead (:func:`build_hand`)."""
    native = build_native(sizes, act, device)
    if hand:
        return native, build_hand(native)
    mg = manualgrad.convert(copy.deepcopy(native))
    if not isinstance(mg, mnn.Sequential):
        raise RuntimeError(f"manualgrad.convert gave {type(mg).__name__}, expected mnn.Sequential")
    return native, mg


def loss_classes() -> tuple[type[nn.Module], type[nn.Module]]:
    """The native and the manualgrad cross-entropy (torch's on both sides until the twin exists)."""
    mg_loss = getattr(mnn, "CrossEntropyLoss", None)
    return nn.CrossEntropyLoss, mg_loss if isinstance(mg_loss, type) else nn.CrossEntropyLoss


def make_batch(cell: Cell, device: torch.device, seed: int = 1) -> tuple[Tensor, Tensor]:
    """A fixed random input batch and its class targets."""
    gen = torch.Generator().manual_seed(seed)
    sizes = cell.sizes
    x = torch.randn(cell.batch, sizes[0], generator=gen).to(device)
    y = torch.randint(0, sizes[-1], (cell.batch,), generator=gen).to(device)
    return x, y


def make_step(
    model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor, compiled: bool
) -> tuple[Step, Callable[[Tensor], Tensor]]:
    """One training step of ``model`` (SGD, momentum) and the forward it calls (maybe compiled)."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    forward: Callable[[Tensor], Tensor] = model
    if compiled:
        forward = torch.compile(model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()

    return step, forward


def make_gemm_bound(native: nn.Module, x: Tensor) -> Step:
    """Just the matrix products of one training step, on the same shapes.

    Per Linear: forward ``addmm(b, H, Wᵀ)``; backward ``δᵀH`` (grad_weight) and ``δW``
    (grad_input, skipped for the first layer: the input needs no gradient). ``δ`` and the hidden
    inputs are fixed random tensors of the right shapes.
    """
    layers = [m for m in native.modules() if isinstance(m, nn.Linear)]
    params = [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for m in layers]
    n = x.shape[0]
    hs = [x, *(torch.randn(n, w.shape[1], device=x.device) for w, _ in params[1:])]
    deltas = [torch.randn(n, w.shape[0], device=x.device) for w, _ in params]

    def gemms() -> None:
        with torch.no_grad():
            for h, (w, b) in zip(hs, params, strict=True):
                h.mm(w.t()) if b is None else torch.addmm(b, h, w.t())
            for i in range(len(params) - 1, -1, -1):
                deltas[i].t().mm(hs[i])
                if i > 0:
                    deltas[i].mm(params[i][0])

    return gemms


def check_same_outputs(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    """Raise unless both models give the same output on ``x`` (they must hold the same weights).

    The tolerance catches different weights, not rounding: a GEMM's summation order may change with
    the threads it gets (2e-5 was seen once between two float32 runs of the same 1024 × 10 logits)."""
    with torch.no_grad():
        ya, yb = a(x), b(x)
    if not torch.allclose(ya, yb, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"native and manualgrad outputs differ by {(ya - yb).abs().max():.3g}")


# ---------------------------------------------------------------------------------------------
# Saved-for-backward bytes.
# ---------------------------------------------------------------------------------------------


def saved_bytes(forward: Callable[[], object], params: Iterable[Tensor]) -> SavedBytes:
    """Bytes that ``forward()`` saves for backward, each storage counted once.

    A ``saved_tensors_hooks`` pack hook records every saved tensor's untyped storage by its
    ``data_ptr``; storages of ``params`` are summed apart. The result of ``forward`` is kept alive
    while counting, so no storage is freed and its address reused meanwhile.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}
    count = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal count
        count += 1
        s = t.untyped_storage()
        storages.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    params_b = sum(n for ptr, n in storages.items() if ptr in param_ptrs)
    acts_b = sum(n for ptr, n in storages.items() if ptr not in param_ptrs)
    del out
    return SavedBytes(activations=acts_b, parameters=params_b, tensors=count)


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------


def _time_cpu(fn: Step, inner: int) -> float:
    """Milliseconds per call of ``fn``, over ``inner`` calls."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def _time_cuda(fn: Step, inner: int) -> float:
    """Milliseconds per call of ``fn`` on the current CUDA device, by events."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / inner


@dataclass(frozen=True)
class Budget:
    """How long to measure a cell."""

    rounds: int = 50
    min_time: float = 2.0  # seconds; keep going past ``rounds`` until this much time has passed
    max_rounds: int = 1000
    warmup: int = 5  # steps per side before timing (compilation happens here)
    sample_ms: float = 10.0  # target length of one timed sample (sets ``inner``)
    patience: float | None = None  # FUSION.patience (0: compile at first use); None: the library's


Times = dict[str, list[float]]


def measure(steps: dict[str, Step], device: str, budget: Budget) -> tuple[Times, int]:
    """Interleaved per-round times (ms per step) of every step function, and the ``inner`` used."""
    timer = _time_cuda if device == "cuda" else _time_cpu
    for _ in range(budget.warmup):
        for fn in steps.values():
            fn()
    probe = max(timer(fn, 1) for fn in steps.values())
    inner = max(1, min(1000, math.ceil(budget.sample_ms / max(probe, 1e-3))))
    names = list(steps)
    orders = list(itertools.permutations(names))  # each side equally often after each other side
    times: Times = {n: [] for n in names}
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget.min_time
        r = 0
        while r < budget.rounds or (time.perf_counter() < deadline and r < budget.max_rounds):
            for n in orders[r % len(orders)]:
                times[n].append(timer(steps[n], inner))
            r += 1
    finally:
        gc.enable()
    return times, inner


def _run_cell_with_threads(cell: Cell, budget: Budget, threads: int | None) -> Row:
    if threads is not None:
        torch.set_num_threads(threads)
    return run_cell(cell, budget)


def run_isolated(cell: Cell, budget: Budget, threads: int | None = None) -> Row:
    """:func:`run_cell` in a fresh Python process.

    A cell's timings depend on the process's history: glibc's malloc moves its mmap threshold
    with every large free, so after other cells the same step's buffers may come from the heap or
    from fresh page-faulting mappings, for either side (seen: one cell at 0.98 alone and 1.23
    after the grid's earlier cells). A fresh process per cell gives every cell the same start.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_run_cell_with_threads, cell, budget, threads).result()


def _median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def run_cell(cell: Cell, budget: Budget) -> Row:
    """Build, check, measure and describe one cell."""
    device = torch.device(cell.device)
    if budget.patience is not None:
        FUSION.patience = budget.patience
    native, mg = build_pair(cell.sizes, cell.act, device, hand=cell.mode == "hand")
    x, y = make_batch(cell, device)
    check_same_outputs(native, mg, x)
    compiled = cell.mode == "compile"
    if compiled:
        torch._dynamo.reset()  # fresh caches: no recompile limit carried over from earlier cells
    native_loss, mg_loss = loss_classes()
    native_step, native_fwd = make_step(native, native_loss(), x, y, compiled)
    mg_step, mg_fwd = make_step(mg, mg_loss(), x, y, compiled)
    steps = {"native": native_step, "manualgrad": mg_step, "gemm": make_gemm_bound(native, x)}
    times, inner = measure(steps, cell.device, budget)
    # After the timing: for compiled cells these are the compiled graphs' saved tensors.
    sn = saved_bytes(lambda: native_fwd(x), native.parameters())
    sm = saved_bytes(lambda: mg_fwd(x), mg.parameters())
    return Row(
        device=cell.device,
        model=cell.model,
        act=cell.act,
        batch=cell.batch,
        mode=cell.mode,
        native_ms=statistics.median(times["native"]),
        manualgrad_ms=statistics.median(times["manualgrad"]),
        ratio=_median_ratio(times["manualgrad"], times["native"]),
        gemm_ms=statistics.median(times["gemm"]),
        mg_over_gemm=_median_ratio(times["manualgrad"], times["gemm"]),
        saved_native=sn.activations,
        saved_mg=sm.activations,
        bytes_ratio=sm.activations / sn.activations if sn.activations else math.nan,
        saved_params_native=sn.parameters,
        saved_params_mg=sm.parameters,
        rounds=len(times["native"]),
        inner=inner,
        times_ms=times,
    )


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

HEADER = (
    "device",
    "model",
    "act",
    "batch",
    "mode",
    "native ms",
    "manualgrad ms",
    "ratio (median of per-round)",
    "GEMM-bound ms",
    "mg/GEMM",
    "saved-bytes native",
    "saved-bytes mg",
    "bytes ratio",
)


def _bytes(n: int) -> str:
    """``n`` bytes, human-readable (binary units)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table (medians; ratios are medians of per-round ratios)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        cells = (
            r.device,
            r.model,
            r.act,
            str(r.batch),
            r.mode,
            f"{r.native_ms:.3f}",
            f"{r.manualgrad_ms:.3f}",
            f"{r.ratio:.3f}",
            f"{r.gemm_ms:.3f}",
            f"{r.mg_over_gemm:.2f}",
            _bytes(r.saved_native),
            _bytes(r.saved_mg),
            f"{r.bytes_ratio:.3f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str, argv: Sequence[str]) -> dict[str, Any]:
    """Everything needed to tell two result files apart."""
    info: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.bench", *argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "manualgrad": manualgrad.__version__,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "device": device,
        "loss": {
            "native": loss_classes()[0].__module__,
            "manualgrad": loss_classes()[1].__module__,
        },
        "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM})",
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def write_results(
    rows: Sequence[Row],
    device: str,
    info: dict[str, Any],
    out_dir: Path,
) -> tuple[Path, Path]:
    """Write ``<date>-<device>-<modes>.md`` and ``.json`` into ``out_dir``; return their paths.

    (An eager and a compile run of the same day and device keep separate files, and so do runs with
    another ``--patience``: ``...-patience0.md``.)"""
    out_dir.mkdir(parents=True, exist_ok=True)
    modes = "-".join(m for m in MODES if any(r.mode == m for r in rows))
    stem = f"{dt.date.today().isoformat()}-{device}-{modes}"
    if info.get("fusion_patience") is not None:
        stem += f"-patience{info['fusion_patience']:g}"
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    head = ", ".join(f"{k}: {info[k]}" for k in ("date", "torch", "cpu_model", "threads"))
    if "gpu" in info:
        head += f", gpu: {info['gpu']}"
    title = f"# manualgrad vs torch.nn, training step ({device})"
    md.write_text(f"{title}\n\n{head}\n\n`{info['command']}`\n\n{markdown_table(rows)}")
    js.write_text(json.dumps({"meta": info, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return md, js


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def cells(
    devices: Sequence[str],
    models: Sequence[str],
    acts: Sequence[str],
    batches: Sequence[int],
    modes: Sequence[str],
    only: Sequence[str] = (),
) -> list[Cell]:
    """The grid, filtered by the ``--only`` patterns (a cell is kept if any pattern matches)."""
    grid = [Cell(*c) for c in itertools.product(devices, models, acts, batches, modes)]
    return [c for c in grid if not only or any(c.matches(p) for p in only)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="benchmarks.bench", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=50, help="minimum rounds per cell (default 50)")
    p.add_argument("--min-time", type=float, default=2.0, help="minimum seconds per cell")
    p.add_argument("--max-rounds", type=int, default=1000, help="cap on rounds per cell")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side (default 5)")
    p.add_argument("--sample-ms", type=float, default=10.0, help="target ms per timed sample")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    p.add_argument(
        "--patience",
        type=float,
        default=None,
        help="FUSION.patience: 0 compiles manualgrad's kernels at first use, so the warm-up reaches the "
        "steady state of a long fixed-shape run (default: the library's break-even rule)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="MODEL:ACT:BATCH:MODE[:DEVICE]",
        help="run only matching cells; fields may be '*' or left out; repeatable",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), help="layer sizes, e.g. 784-256-10")
    p.add_argument("--acts", nargs="+", default=list(ACTIVATIONS), choices=sorted(_REGISTRY))
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--devices",
        nargs="+",
        default=None,
        choices=("cpu", "cuda"),
        help="default: cpu, and cuda when available",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a few rounds of the grid's first cell (or of the --only cells)",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results are written")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="run every cell in this process (default: each cell in a fresh process)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.min_time, args.warmup, args.sample_ms = 5, 0.0, 2, 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected cells, print one table per device and write the result files."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device available")
    budget = Budget(args.rounds, args.min_time, args.max_rounds, args.warmup, args.sample_ms, args.patience)
    selected = cells(devices, args.models, args.acts, args.batches, args.modes, args.only)
    if not selected:
        raise SystemExit("no cell matches --only")
    if args.quick and not args.only:
        selected = selected[:1]  # 784-256-256-10:relu:128:eager:cpu by default
    for device in devices:
        todo = [c for c in selected if c.device == device]
        if not todo:
            continue
        rows: list[Row] = []
        for i, cell in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {cell.key}", file=sys.stderr, flush=True)
            rows.append(run_cell(cell, budget) if args.no_isolate else run_isolated(cell, budget, args.threads))
        print(markdown_table(rows))
        if not args.no_save:
            info = {**machine_info(device, argv), "fusion_patience": args.patience}
            md, js = write_results(rows, device, info, args.out_dir)
            print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
