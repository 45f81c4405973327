"""Which modules `prebuild` makes for a target: each op lists the specs of its config groups."""

from __future__ import annotations

from collections.abc import Callable

from .jit.arch import Target
from .jit.module import ModuleSpec


def _mma_probe(target: Target) -> list[ModuleSpec]:
    from .ops.mma_probe import MENU, mma_probe_spec

    return [] if target.emulated else [mma_probe_spec(target, k) for k in MENU["k_tiles"]]


PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {
    "mma_probe": _mma_probe,
}
