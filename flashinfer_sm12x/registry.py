"""Which modules `prebuild` makes for a target: each op lists the specs of its config groups."""

from __future__ import annotations

from collections.abc import Callable

from .jit.arch import Target
from .jit.module import ModuleSpec


def _mma_probe(target: Target) -> list[ModuleSpec]:
    from .ops.mma_probe import MENU, mma_probe_spec

    return [] if target.emulated else [mma_probe_spec(target, k) for k in MENU["k_tiles"]]


def _mm_fp4(target: Target) -> list[ModuleSpec]:
    import torch

    from .ops.mm_fp4 import EMULATED_FORMATS, MENU, mm_fp4_spec, shipped

    formats = EMULATED_FORMATS if target.emulated else MENU["format"]
    return [mm_fp4_spec(target, fmt, tactic, out) for fmt in formats for out in (torch.bfloat16, torch.float16)
            for tactic in shipped(fmt, target)]


PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {
    "mma_probe": _mma_probe,
    "mm_fp4": _mm_fp4,
}
