# SPDX-License-Identifier: Apache-2.0
"""Where the package's non-Python parts live (repository layout: jit/, include/, csrc/)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_ROOT = PACKAGE_DIR.parent

# The templates, headers and bindings are top-level folders of the repository; an editable install
# (`pip install -e .`) uses them in place.
TEMPLATE_DIR = _ROOT / "jit"
INCLUDE_DIR = _ROOT / "include"
CSRC_DIR = _ROOT / "csrc"


def check_layout() -> None:
    missing = [p for p in (TEMPLATE_DIR, INCLUDE_DIR, CSRC_DIR) if not p.is_dir()]
    if missing:
        from .errors import ToolchainError

        raise ToolchainError(
            f"flashinfer_sm12x's source folders are missing: {', '.join(map(str, missing))}. "
            "Install from a checkout with `pip install -e .` so jit/, include/ and csrc/ stay next to the package."
        )
