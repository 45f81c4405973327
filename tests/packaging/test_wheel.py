# SPDX-License-Identifier: Apache-2.0
"""The wheel and the sdist carry the kernel sources, and an installed (non-editable) package finds and uses them.

Builds from a copy of the checkout in a temporary directory (no build/ or egg-info left in the repository),
with the environment's setuptools (--no-build-isolation: no download).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNEL_SOURCE_FOLDERS = ("include", "csrc", "jit")
PROJECT_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _kernel_sources() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for folder in KERNEL_SOURCE_FOLDERS
                  for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # pyproject.toml's SPDX license field needs setuptools >= 77 (the [test] extra installs it).
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "data")
    for name in ("flashinfer_sm12x", *KERNEL_SOURCE_FOLDERS):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_sdist(sys.argv[1])", str(out)],
                   check=True, capture_output=True, cwd=src, timeout=300)
    return out


def test_kernel_sources_exist_in_the_checkout() -> None:
    names = _kernel_sources()
    assert "jit/mm_fp4.cu.jinja" in names and "csrc/ffi_checks.h" in names
    assert any(n.startswith("include/flashinfer_sm12x/") and n.endswith(".cuh") for n in names)


def test_wheel_carries_headers_templates_and_csrc(dist: Path) -> None:
    (wheel,) = dist.glob("flashinfer_sm12x-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [p for p in _kernel_sources() if f"flashinfer_sm12x/data/{p}" not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert "flashinfer_sm12x/paths.py" in names
    assert not any(n.startswith(("include/", "jit/", "csrc/")) for n in names)  # only inside the package


def test_sdist_carries_headers_templates_and_csrc(dist: Path) -> None:
    (sdist,) = dist.glob("flashinfer_sm12x-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    missing = [p for p in _kernel_sources() if p not in names]
    assert not missing, f"not in {sdist.name}: {missing}"
    assert {"setup.py", "MANIFEST.in", "pyproject.toml"} <= names


_INSTALLED_PROBE = """
import sys
from pathlib import Path

import flashinfer_sm12x
from flashinfer_sm12x import paths
from flashinfer_sm12x.jit.render import render
from flashinfer_sm12x.ops.mma_probe import MENU

assert Path(flashinfer_sm12x.__file__).is_relative_to(sys.argv[1]), flashinfer_sm12x.__file__
paths.check_layout()
text = render("mma_probe.cu.jinja", {"k_tiles": 1}, MENU)
header = paths.INCLUDE_DIR / "flashinfer_sm12x" / "probe" / "mma_probe.cuh"
print(paths.layout(), paths.source_base(), header.is_file(), "mma_probe.cuh" in text)
"""


def test_installed_wheel_finds_its_packaged_sources(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("flashinfer_sm12x-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip install puts in site-packages
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", _INSTALLED_PROBE, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    layout, base, header_found, rendered = out.stdout.split()
    assert layout == "installed" and base == str(site / "flashinfer_sm12x" / "data")
    assert header_found == "True" and rendered == "True"


def test_checkout_layout_is_used_in_place() -> None:
    from flashinfer_sm12x import paths

    assert paths.layout() == "checkout" and paths.INCLUDE_DIR == REPO / "include"
    assert paths.TEMPLATE_DIR == REPO / "jit" and paths.CSRC_DIR == REPO / "csrc"
