"""A/B in one process: manualgrad at a git revision against the working tree, and both against torch.nn.

This VM moves the same cell by ±5 % between processes, more than most changes are worth. Here the
two builds run side by side in one process instead: the revision's ``manualgrad`` package is
extracted (``git archive``) into a temporary directory under another name (``manualgrad_<rev>``, its
own imports rewritten to match), both packages are imported, and the training steps of native,
the revision and the working tree are alternated ``--steps`` times, the order rotating each round
(:func:`benchmarks.floor.interleave`).
Reported: each side's median step time and the median of its per-step ratios to native, which
resolves about one point.

Modes (the small ReLU MLP at batch 128 by default; one step = ``zero_grad``, forward, cross entropy,
backward, SGD with momentum; library defaults, so kernels compile only once they have paid):

* ``hand``: ``nn.Sequential(mnn.Linear, mnn.ReLU, ...)``, manualgrad's loss (``--loss torch``: torch's);
* ``fused``: ``convert(model)``, the dense stack;
* ``norms`` / ``clip``: the fused model with ``per_sample(model)`` / ``clip_per_sample(model, 1.0)``
  around the backward (the clipped sum divided by the batch, as DP-SGD's optimizer scales it).

Usage::

    python -m benchmarks.ab --rev 46e76ee --mode hand
    python -m benchmarks.ab --rev HEAD --mode norms --batch 256 --loss torch --steps 300
    python -m benchmarks.ab --rev 00eef08 --mode hand --batch 1024 --patience 0   # steady state
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import manualgrad
from benchmarks.bench import LR, MOMENTUM, build_hand, build_native
from benchmarks.floor import interleave

__all__ = ["MODES", "load_revision", "main", "make_step"]

ROOT = Path(__file__).resolve().parents[1]
MODES = ("hand", "fused", "norms", "clip")
Step = Callable[[], None]


def load_revision(rev: str, into: Path) -> ModuleType:
    """The ``manualgrad`` package of git revision ``rev``, imported as ``manualgrad_<rev>`` from ``into``."""
    name = "manualgrad_" + re.sub(r"\W", "_", rev)
    if name in sys.modules:  # loaded before in this process
        return sys.modules[name]
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "manualgrad"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / name
    (into / "manualgrad").rename(package)
    for source in package.rglob("*.py"):  # its own imports, to the new name
        source.write_text(re.sub(r"\bmanualgrad\b", name, source.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def make_step(pkg: Any, mode: str, native: nn.Sequential, x: Tensor, y: Tensor, loss: str) -> Step:
    """One training step of ``mode`` with package ``pkg`` (``None``: native) on a copy of ``native``."""
    mnn = None if pkg is None else importlib.import_module(pkg.__name__ + ".nn")
    if mnn is None:
        model, criterion = copy.deepcopy(native), nn.CrossEntropyLoss()
    elif mode == "hand":
        model = build_hand(native, mnn)
        criterion = mnn.CrossEntropyLoss() if loss == "mnn" else nn.CrossEntropyLoss()
    else:
        model = pkg.convert(copy.deepcopy(native))
        criterion = mnn.CrossEntropyLoss() if loss == "mnn" else nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    params = list(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = criterion(model(x), y)
        if pkg is None or mode in ("hand", "fused"):
            out.backward()
        elif mode == "norms":
            with pkg.per_sample(model):
                out.backward()
        else:
            with pkg.clip_per_sample(model, 1.0):
                out.backward()
            torch._foreach_div_([p.grad for p in params], x.shape[0])  # type: ignore[misc]
        opt.step()

    return step


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="HEAD", help="the git revision to compare the working tree with")
    p.add_argument("--mode", choices=MODES, default="hand")
    p.add_argument("--model", default="784-256-256-10", help="layer sizes")
    p.add_argument("--act", default="relu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--loss", choices=("mnn", "torch"), default="mnn")
    p.add_argument("--steps", type=int, default=300, help="rounds of interleaved steps")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads(N)")
    p.add_argument(
        "--patience", type=float, default=None, help="FUSION.patience of both builds (0: kernels compile at first use)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.model.split("-")]
    native = build_native(sizes, args.act, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (args.batch,), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        if args.patience is not None:  # each build has its own FUSION
            for pkg in (old, manualgrad):
                importlib.import_module(pkg.__name__ + ".fusion").FUSION.patience = args.patience
        steps = {
            "native": make_step(None, args.mode, native, x, y, args.loss),
            args.rev: make_step(old, args.mode, native, x, y, args.loss),
            "working tree": make_step(manualgrad, args.mode, native, x, y, args.loss),
        }
        results = interleave(steps, args.steps)
    print(
        f"{args.model} {args.act}, batch {args.batch}, mode {args.mode}, loss {args.loss}, "
        f"{args.threads} thread(s), {args.steps} rounds, patience {args.patience}\n"
    )
    print("| side | µs per step | ratio to native |\n|---|---|---|")
    for side, (ms, ratio) in results.items():
        print(f"| {side} | {ms * 1e3:.1f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
