"""The distributions as a user gets them: what the wheel and sdist hold, their metadata, and the
wheel installed into a fresh virtual environment beside torch, run from outside the repository.

The dists are built from a copy of the working tree (so nothing is written into the repository)
with ``python -m build --no-isolation``: the test environment's setuptools is the build backend
(the ``[test]`` extra requires it), so the build is offline and takes about two seconds.

The fresh venv gets torch the way ``pip install manualgrad`` would leave it, without a 5 GB
reinstall per run: every file that pip recorded (RECORD) for torch and for each distribution torch
requires, recursively, is symlinked into the new venv's site-packages, and nothing else is. So
torch, its dist-info and its own requirements are there (``pip check`` passes), while numpy,
Lightning, pytest, ... and the repository's ``train`` are not. The wheel goes in with
``pip install --no-deps --no-index``; the README's first code block, then a float64 gradcheck,
run in one ``python -I`` from a temporary directory.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _source_version() -> str:
    """``__version__`` from manualgrad/__init__.py, read the way setuptools' ``attr:`` reads it (no import)."""
    tree = ast.parse((REPO / "manualgrad" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return str(ast.literal_eval(node.value))
    raise AssertionError("manualgrad/__init__.py has no literal __version__ = '...'")


VERSION = _source_version()
DIST_INFO = f"manualgrad-{VERSION}.dist-info"
SDIST_ROOT = f"manualgrad-{VERSION}"


def _run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{cmd} exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _copy_source(dest: Path) -> None:
    """The files a clean clone would have: git's tracked and untracked-but-not-ignored files."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual ignores
        shutil.copytree(
            REPO,
            dest,
            ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", "data"),
        )
        return
    for name in names:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, and the wheel built from that sdist (``python -m build``'s default route)."""
    root = tmp_path_factory.mktemp("dists")
    src, out = root / "src", root / "dist"
    _copy_source(src)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _top_level(names: list[str]) -> set[str]:
    return {n.split("/")[0] for n in names}


def test_wheel_holds_manualgrad_only(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"manualgrad-{VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    assert _top_level(names) == {"manualgrad", DIST_INFO}
    assert "manualgrad/py.typed" in names
    assert f"{DIST_INFO}/licenses/LICENSE" in names
    assert {"manualgrad/__init__.py", "manualgrad/functional/__init__.py", "manualgrad/nn/__init__.py"} <= set(names)
    assert not [n for n in names if re.search(r"(^|/)(tests?|conftest)(/|\.py$)|(^|/)test_[^/]*\.py$", n)]
    top_level_txt = zipfile.ZipFile(dists["wheel"]).read(f"{DIST_INFO}/top_level.txt").decode().split()
    assert top_level_txt == ["manualgrad"]


def test_sdist_holds_manualgrad_only(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = [m.name for m in tar.getmembers()]
    assert _top_level(names) == {SDIST_ROOT}
    inside = {n.split("/")[1] for n in names if "/" in n}
    assert inside == {
        "LICENSE",
        "MANIFEST.in",
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
        "manualgrad",
        "manualgrad.egg-info",
    }
    assert f"{SDIST_ROOT}/manualgrad/py.typed" in names


def _wheel_metadata(wheel: Path) -> email.message.Message:
    text = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/METADATA").decode()
    return email.parser.Parser().parsestr(text)


def test_metadata_requires_torch_only(dists: dict[str, Path]) -> None:
    meta = _wheel_metadata(dists["wheel"])
    assert meta["Name"] == "manualgrad"
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Description-Content-Type"] == "text/markdown"
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    core = [r for r in reqs if r.marker is None]
    assert [r.name for r in core] == ["torch"]
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"train", "test", "dev"} <= extras
    train = {canonicalize_name(r.name) for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "train"})}
    assert {
        "lightning",
        "torchvision",
        "torchmetrics",
        "jsonargparse",
        "matplotlib",
        "numpy",
        "filelock",
        "opacus",
    } <= train


def test_library_imports_torch_and_stdlib_only() -> None:
    """What the core imports is what it requires: torch (the app's imports belong to ``[train]``)."""
    found: set[str] = set()
    for path in (REPO / "manualgrad").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    assert found - sys.stdlib_module_names - {"__future__"} == {"manualgrad", "torch"}


def test_twine_check(dists: dict[str, Path]) -> None:
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", str(dists["wheel"]), str(dists["sdist"])])
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def _requirement_closure(root: str) -> list[md.Distribution]:
    """``root`` and every distribution it requires, recursively (markers and extras evaluated here)."""
    todo: list[tuple[str, str]] = [(root, "")]
    seen: dict[tuple[str, str], md.Distribution] = {}
    while todo:
        name, extra = todo.pop()
        dist = md.distribution(name)
        key = (canonicalize_name(dist.metadata["Name"]), extra)
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
    unique = {canonicalize_name(d.metadata["Name"]): d for d in seen.values()}
    return list(unique.values())


def _link_installed(dists: list[md.Distribution], site: Path) -> int:
    """Symlink every file pip recorded for ``dists`` into ``site`` (scripts outside site-packages skipped)."""
    count = 0
    for dist in dists:
        base = Path(str(dist.locate_file(""))).resolve()
        for rel in dist.files or []:
            src = Path(str(dist.locate_file(rel)))
            if rel.parts[0] == ".." or not src.is_file():
                continue
            dest = site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(base / rel)
                count += 1
    return count


def _readme_first_python_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert match, "README.md has no ```python block"
    return match.group(1)


SMOKE = """
import importlib.metadata, importlib.util, sys
exec(compile(sys.argv[1], "README.md's first python block", "exec"), {{"__name__": "__main__"}})
import manualgrad, torch

assert manualgrad.__file__.startswith(sys.prefix), manualgrad.__file__
assert torch.__file__.startswith(sys.prefix), torch.__file__
assert manualgrad.__version__ == importlib.metadata.version("manualgrad") == {version!r}
for absent in ("train", "lightning", "torchvision", "numpy", "matplotlib", "pytest"):
    assert importlib.util.find_spec(absent) is None, absent

x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
b = torch.randn(5, dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(manualgrad.functional.linear, (x, w, b))
print("smoke ok", manualgrad.__version__, "torch", torch.__version__)
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_beside_torch(dists: dict[str, Path], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    assert _link_installed(_requirement_closure("torch"), site) > 0
    pip = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check"]
    _run([*pip, "install", "--no-deps", "--no-index", "-q", str(dists["wheel"])])
    _run([*pip, "check"])  # manualgrad's one requirement (torch) and torch's are all satisfied
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    smoke = textwrap.dedent(SMOKE.format(version=VERSION))
    proc = _run([str(py), "-I", "-c", smoke, _readme_first_python_block()], cwd=work, env=env)
    assert f"smoke ok {VERSION}" in proc.stdout
