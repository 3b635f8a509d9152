"""``scripts/mutants.py`` stays runnable: every mutant's line is in its file exactly once (``make mutants``
stops at the first one that is not, so a formula rewritten without its mutant would go unchecked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutants() -> list:
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return list(module.MUTANTS)


@pytest.mark.parametrize("mutant", _mutants(), ids=lambda m: m.id)
def test_mutant_line_found_once(mutant: object) -> None:
    text = (ROOT / mutant.path).read_text()  # type: ignore[attr-defined]
    assert text.count(mutant.old) == 1, f"{mutant.id}: {mutant.old!r} in {mutant.path}"  # type: ignore[attr-defined]
    first = mutant.first[0].split("::")[0]  # type: ignore[attr-defined]
    assert (ROOT / first).is_file(), f"{mutant.id}: {first}"  # type: ignore[attr-defined]
