"""Fused CPU kernels compiled from manualgrad's own formulas: :data:`FUSION`.

A formula (an activation derivative of the registry, the cross-entropy gradient, a dense stack's
whole backward) is traced to an FX graph with ``make_fx``, compiled by TorchInductor for
one set of input shapes, and called straight. The formulas stay the Python functions that also run
op by op; this module only decides where their compiled form may replace them, and compiles it.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from manualgrad._compat import functorch_level as _functorch_level
from manualgrad._compat import is_legacy_batched as _is_legacy_batched

__all__ = ["FUSION", "plain_first_order"]


class _Fusion:
    """Compiles manualgrad's formulas into fused CPU kernels with TorchInductor.

    Used only where nothing needs the op-by-op graph: no grad mode (so not double backward), no
    autocast, no functorch transform or batched gradients, not already inside ``torch.compile``,
    contiguous CPU tensors. A kernel is a formula traced to an FX graph (``make_fx``) and compiled
    by TorchInductor for one set of input shapes and dtypes, then called straight (see
    :func:`_direct_call`): TorchDynamo's frame evaluation and guards (``torch.compile``'s per-call
    cost, tens of µs) would eat the gain on small tensors. A compile costs one to a few seconds a
    shape (more for the first one in a process), so a shape is compiled only once it has paid for
    that (:meth:`run`: the break-even rule); until then, and for shapes that do not come back, the
    eager formulas run. After ``max_kernels`` kernels new shapes run eagerly.

    Users:

    * :class:`~manualgrad.functional.dense.DenseStack` (``Linear → activation`` runs, the MLP):
      its backward becomes one compiled graph: the matrix products stay torch's, the activation
      derivatives and the bias sums become fused loops, and the per-layer Python work goes away
      (its forward stays eager: compiled, it measured slower);
    * the activation derivatives of the registry elsewhere
      (:meth:`~manualgrad.activations.Activation.backward`; written
      into ``grad_output`` where the backward owns that buffer, since a fresh large buffer costs
      page faults on every step);
    * the cross-entropy gradient (:class:`manualgrad.functional.loss.CrossEntropyIndices`).

    Settings: ``enabled = False`` uses the eager formulas everywhere; ``dense = False`` keeps the
    dense stack op by op; ``min_numel`` is the size from which stacks (counted in their widest
    layer) and multi-op activation formulas (GELU, SiLU, ...) are fused, ``min_numel_simple`` the
    size for the one- or two-kernel ones with an in-place ``grad_`` (ReLU, Sigmoid, Tanh): ``None``
    by default, never, since their compiled loop measured no faster than their eager form (a
    hand-composed small MLP at batch 1024, in one process: ReLU 1.069 eager against 1.092 with the
    kernel, Sigmoid 1.047 against 1.058, Tanh 1.058 against 1.057; GELU's kernel: 1.040 against
    1.102 eager);
    ``patience`` scales the break-even rule (``0``: compile every shape at first use, as before a
    long fixed-shape run; larger: compile later); ``sample_every`` is how sparsely calls are counted
    while no kernel exists (:meth:`sample`). A machine where compiling fails (no C++ compiler) uses
    the eager formulas after one warning.
    """

    def __init__(self) -> None:
        self.enabled = True
        self.dense = True
        self.min_numel = 1 << 12
        self.min_numel_simple: int | None = None  # ReLU, Sigmoid, Tanh: never (see above)
        self.max_kernels = 64
        self.patience = 1.0  # scales the break-even rule (0: compile at first use)
        self.sample_every = 8  # while no kernel exists, one call in this many is counted (sample)
        self._rng = random.Random(0)  # which calls: a private stream (the user's random state is theirs)
        self.compile_seconds = 2.0  # what one compile costs here: the running mean of those done
        self.broken = False  # compiling failed once: stay eager
        self._tracing = False  # a formula is being traced: its inner formulas run as they are
        self._kernels: dict[tuple[Any, ...], Callable[..., tuple[Tensor, ...]]] = {}
        self._eager_seconds: dict[tuple[Any, ...], float] = {}  # per shape, while not compiled
        self._compiles: list[float] = []  # seconds each compile took

    def usable(self, *tensors: Tensor) -> bool:
        """Whether a fused kernel may replace the eager formula on these inputs, here and now."""
        return plain_first_order(*tensors) and self.fits(*tensors)

    def fits(self, *tensors: Tensor) -> bool:
        """:meth:`usable`, for a caller that has found its inputs in plain first order already
        (:func:`plain_first_order`): fusion on and working, contiguous CPU tensors, no autocast."""
        return (
            self.enabled
            and not self.broken
            and not self._tracing
            and tensors[0].is_cpu
            and not torch.is_autocast_enabled("cpu")
            and all(t.is_contiguous() for t in tensors)
        )

    def sample(self) -> int:
        """How many calls this one stands for in the break-even rule; ``0``: run the eager formula
        straight, without the checks and the accounting of :meth:`usable` and :meth:`run`.

        Once a kernel exists (or with ``patience = 0``: compile at first use) every call counts
        (``1``). Until then, which is all of a short run and of a run whose shapes never repeat,
        one call in ``sample_every``, drawn at random (no call site is always skipped), counts for
        ``sample_every``: in a training step those checks and that accounting cost several
        percent of a small model's step (Python run between large matrix products is several times
        slower than in a loop of its own), for a compile decision that a sample makes as well.
        """
        if torch.compiler.is_compiling() or not self.enabled or self.broken:  # traced: no kernel, nothing drawn
            return 0
        if self._kernels or self.patience == 0 or self.sample_every <= 1:
            return 1
        return self.sample_every if self._rng.random() * self.sample_every < 1.0 else 0

    def run(
        self,
        key: tuple[Any, ...],
        formula: Callable[..., Tensor | tuple[Tensor, ...]],
        *args: Tensor,
        gain: float,
        eager: Callable[..., Tensor | tuple[Tensor, ...]] | None = None,
        calls: int = 1,
    ) -> tuple[Tensor, ...]:
        """``formula(*args)`` as a tuple: by its compiled kernel where there is one, else eagerly.

        ``key`` names everything the formula depends on besides the shapes and dtypes of ``args``
        (contiguous tensors, as :meth:`usable` requires: their shapes fix their strides); ``eager``
        computes the same formula op by op (default: ``formula`` itself); ``gain`` is the fraction
        of the eager time a kernel saves (about 0.1 for a dense stack, whose matrix products stay
        the same, more for elementwise formulas); ``calls``: how many calls this one stands for
        (:meth:`sample`).

        A shape is compiled only once it has paid for its compile (the break-even rule of renting
        against buying): when the time a kernel would have saved so far, ``gain`` × the eager
        seconds spent on that shape, reaches what a compile costs (``compile_seconds``, the mean
        of the compiles done so far, × ``patience``). Until then, and for shapes that never come
        back (a new batch size at every step), the eager formula runs and no call waits on a
        compile; a shape that repeats pays at most about twice what compiling it at once, or
        never, would have cost.
        """
        full_key = (key, *[(t.shape, t.dtype) for t in args])  # contiguous (``usable``): the shape fixes the strides
        fn = self._kernels.get(full_key)
        if fn is not None:
            return fn(*args)
        spent = self._eager_seconds.get(full_key, 0.0)
        if gain * spent >= self.patience * self.compile_seconds and len(self._kernels) < self.max_kernels:
            fn = self._timed_compile(formula, args)
            if fn is not None:
                self._kernels[full_key] = fn
                self._eager_seconds.pop(full_key, None)
                return fn(*args)
        start = time.perf_counter()
        out = (formula if eager is None else eager)(*args)
        if len(self._eager_seconds) >= 4096:  # many one-off shapes: forget them
            self._eager_seconds.clear()
        self._eager_seconds[full_key] = spent + calls * (time.perf_counter() - start)
        return out if isinstance(out, tuple) else (out,)

    def _timed_compile(
        self, formula: Callable[..., Tensor | tuple[Tensor, ...]], example: tuple[Tensor, ...]
    ) -> Callable[..., tuple[Tensor, ...]] | None:
        start = time.perf_counter()
        fn = self._compile(formula, example)
        if fn is not None:  # a failed compile says nothing about what one costs
            self._compiles.append(time.perf_counter() - start)
            self.compile_seconds = sum(self._compiles) / len(self._compiles)
        return fn

    def _compile(
        self, formula: Callable[..., Tensor | tuple[Tensor, ...]], example: tuple[Tensor, ...]
    ) -> Callable[..., tuple[Tensor, ...]] | None:
        def as_tuple(*args: Tensor) -> tuple[Tensor, ...]:
            out = formula(*args)
            return out if isinstance(out, tuple) else (out,)

        inputs: list[Any] = [torch.empty_like(t) for t in example]
        graphs: list[Any] = []

        def inner_compile(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
            graphs.append(compile_fx_inner(gm, example_inputs, **kwargs))  # keep the compiled graph
            return graphs[-1]

        try:
            from torch._inductor.compile_fx import compile_fx, compile_fx_inner  # internal: failing, eager
            from torch.fx.experimental.proxy_tensor import make_fx

            self._tracing = True
            try:
                graph = make_fx(as_tuple)(*inputs)
            finally:
                self._tracing = False
            # parallel loops from 2 x 4096 elements on (torch's own kernels split at 32768)
            options = {"cpp.min_chunk_size": 1 << 12}
            compiled: Any = compile_fx(graph, inputs, inner_compile=inner_compile, config_patches=options)
            return _direct_call(compiled, graphs, example)  # a first call: this torch's convention fails here
        except Exception as err:  # no C++ compiler, or any other compiler failure
            warnings.warn(f"manualgrad: fused kernels unavailable ({err!r}); using eager ops", stacklevel=4)
            self.broken = True
            return None


def plain_first_order(*tensors: Tensor) -> bool:
    """Plain first order on ``tensors``: not traced by TorchDynamo (checked first: it folds the check and
    traces no further), no grad mode (no double backward), no functorch transform, no batched gradients.
    What a fused kernel needs, and what ``out=`` and in-place ops on fresh buffers need (the registry's
    ``grad_plain``)."""
    return (
        not torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and _functorch_level() is None
        and not any(map(_is_legacy_batched, tensors))
    )


def _direct_call(
    compiled: Callable[..., tuple[Tensor, ...]], graphs: list[Any], example: tuple[Tensor, ...]
) -> Callable[..., tuple[Tensor, ...]]:
    """The compiled graph called straight, without the half-dozen Python wrapper layers (TorchDynamo's
    frame guard, AOTAutograd's runtime wrapper, output unflattening) that ``compiled`` goes through.

    Those layers cost 4 µs a call warm and tens of µs right after large matrix products (cold caches),
    more than a small kernel itself. The direct call is used only if, on copies of ``example``, it
    returns and writes exactly what ``compiled`` does; ``compiled`` itself otherwise.
    """
    run = getattr(graphs[0], "current_callable", None) if len(graphs) == 1 else None

    def direct(*args: Tensor) -> tuple[Tensor, ...]:
        return tuple(run([*args]))  # type: ignore[misc]  # ``run`` takes (and empties) a list

    a = [t.clone() for t in example]
    b = [t.clone() for t in example]
    expected = compiled(*a)  # the official way; raises where this torch calls it differently
    if run is None:
        return compiled
    try:
        got = direct(*b)
    except Exception:
        return compiled
    aliases = [[e.data_ptr() == t.data_ptr() for t in a] for e in expected]
    same = (
        len(got) == len(expected)
        and all(_identical(x, y) for x, y in zip((*expected, *a), (*got, *b), strict=True))
        and aliases == [[o.data_ptr() == t.data_ptr() for t in b] for o in got]
    )
    return direct if same else compiled


def _identical(x: Tensor, y: Tensor) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)


FUSION = _Fusion()
"""The fused kernels and their settings (``FUSION.enabled``, ``FUSION.dense``, ``FUSION.min_numel``, ...)."""
