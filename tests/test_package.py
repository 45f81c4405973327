# SPDX-License-Identifier: Apache-2.0
"""The package's structure: every module imports on its own, nothing below the package face imports the face (no
import circle), every source file carries its SPDX line, and the repository speaks of itself only."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import flashinfer_sm12x

ROOT = Path(flashinfer_sm12x.__file__).resolve().parent.parent
PACKAGE = Path(flashinfer_sm12x.__file__).resolve().parent
# flashinfer_sm12x.testing needs pytest, vllm_plugin needs nothing at import: all import on their own.
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="flashinfer_sm12x."))


_IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "flashinfer_sm12x" or m.startswith("flashinfer_sm12x.")]:
        del sys.modules[loaded]  # each module starts from nothing of the package (third-party imports stay)
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, with none of the package loaded (an import circle fails here)."""
    modules = [m for m in MODULES if not m.endswith("__main__")]  # __main__ runs the CLI
    assert len(modules) > 20
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, *modules], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _face_imports(path: Path) -> list[str]:
    """Names `path` takes from the package face itself (attributes of flashinfer_sm12x/__init__.py, not submodules):
    the pattern that makes an import circle, since the face imports every op."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    taken = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source == "flashinfer_sm12x":
                taken += [a.name for a in node.names if not _is_module(f"{source}.{a.name}")]
        elif isinstance(node, ast.Import):
            taken += [a.name for a in node.names if a.name == "flashinfer_sm12x"]
    return taken


def test_nothing_below_the_face_imports_the_face() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py" or path.name == "__main__.py":
            continue
        if names := _face_imports(path):
            offenders[str(path.relative_to(ROOT))] = names
    assert not offenders, f"names taken from the face (the package __init__, which imports every op): {offenders}"


SOURCE_GLOBS = ("flashinfer_sm12x/**/*.py", "include/**/*.cuh", "csrc/*.h", "jit/*.jinja", "tests/**/*.py",
                "tests/**/*.cu", "scripts/*", "benchmarks/*.py", ".ci/*.sh", ".ci/run")


def _sources() -> list[Path]:
    files = {p for g in SOURCE_GLOBS for p in ROOT.glob(g) if p.is_file()}
    return sorted(p for p in files if p.name != "__init__.py" or p.stat().st_size)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_files_carry_spdx(path: Path) -> None:
    head = path.read_text().splitlines()[:3]
    assert any("SPDX-License-Identifier: Apache-2.0" in line for line in head), path


def test_repository_refers_only_to_itself() -> None:
    needles = ("FACTS.md", "../shared", "issue notes", "the issue")
    hits = []
    for path in _sources() + sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        hits += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not hits, hits


def test_registry_names_every_kernel_family() -> None:
    """The command line lists families by name without importing them; the names must be the families."""
    from flashinfer_sm12x import registry
    from flashinfer_sm12x.kernels import FAMILIES

    assert set(registry.FAMILY_NAMES) == set(FAMILIES) == set(registry.PREBUILD)
