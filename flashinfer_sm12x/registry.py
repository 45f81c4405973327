# SPDX-License-Identifier: Apache-2.0
"""Which modules `prebuild` makes for a target: every kernel family's shipped menu (kernels.FAMILIES)."""

from __future__ import annotations

from collections.abc import Callable

from .jit.arch import Target
from .jit.module import ModuleSpec
from .kernels import FAMILIES

PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {name: f.prebuild for name, f in FAMILIES.items()}
