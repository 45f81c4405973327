# SPDX-License-Identifier: Apache-2.0
"""Where the package's non-Python parts live: the Jinja templates (jit/), C++ headers (include/), bindings (csrc/).

Two layouts:
- a source checkout (also an editable install, `pip install -e .`): the repository's top-level folders, in place;
- an installed wheel: the copies that the build step (setup.py) put in flashinfer_sm12x/data/.
The checkout is used when the package sits in one (its folders next to the package); otherwise the packaged copy.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPOSITORY_ROOT = PACKAGE_DIR.parent
PACKAGED_DATA_DIR = PACKAGE_DIR / "data"

# A file each layout must have, so that unrelated folders named include/ or jit/ next to an installed package
# (site-packages) are never mistaken for a checkout.
_MARKERS = ("jit/mma_probe.cu.jinja", "include/flashinfer_sm12x/probe/mma_probe.cuh", "csrc/ffi_checks.h")


def _has_sources(base: Path) -> bool:
    return all((base / marker).is_file() for marker in _MARKERS)


def source_base() -> Path:
    """The folder holding jit/, include/ and csrc/: the checkout when present, else the installed package data."""
    if _has_sources(REPOSITORY_ROOT):
        return REPOSITORY_ROOT
    return PACKAGED_DATA_DIR


def layout() -> str:
    """"checkout" or "installed": which copy of the kernel sources this process uses."""
    return "checkout" if source_base() == REPOSITORY_ROOT else "installed"


_BASE = source_base()
TEMPLATE_DIR = _BASE / "jit"
INCLUDE_DIR = _BASE / "include"
CSRC_DIR = _BASE / "csrc"


def check_layout() -> None:
    """Raise ToolchainError when the kernel sources are in neither layout.

    Raises
    ------
    ToolchainError
        jit/, include/ or csrc/ is missing from both the checkout and the installed package data.
    """
    missing = [p for p in (TEMPLATE_DIR, INCLUDE_DIR, CSRC_DIR) if not p.is_dir()]
    if missing:
        from .errors import ToolchainError

        raise ToolchainError(
            f"flashinfer_sm12x's kernel sources are missing: {', '.join(map(str, missing))}. A wheel carries them "
            f"in {PACKAGED_DATA_DIR}; reinstall it (pip install --force-reinstall flashinfer-sm12x), or install "
            "from a checkout with `pip install -e .`."
        )
