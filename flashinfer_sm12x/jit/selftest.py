# SPDX-License-Identifier: Apache-2.0
"""A tiny host-only module that exercises the whole JIT path without a GPU (used by `doctor` and the tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .module import ModuleSpec, Source, load_module
from .render import render

MENU = {"value": (1, 2, 3, 42), "use_extra_header": (False, True)}


def selftest_spec(value: int = 42, extra_include_dirs: Sequence[Path] = ()) -> ModuleSpec:
    params = {"value": value, "use_extra_header": bool(extra_include_dirs)}
    text = render("jit_selftest.cpp.jinja", params, MENU)
    group = f"v{value}" + ("_hdr" if extra_include_dirs else "")
    return ModuleSpec(
        op="jit_selftest", group=group, target=None,
        sources=(Source("jit_selftest.cpp", text),), extra_include_dirs=tuple(extra_include_dirs),
    )


def run_selftest(value: int = 42, root: Path | None = None) -> Any:
    return load_module(selftest_spec(value), root).answer()
