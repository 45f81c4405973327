# SPDX-License-Identifier: Apache-2.0
"""Kernel families: one description per template (menu, candidates, proven menus, module specs, heuristics).

`FAMILIES` is what prebuild, the compile sweep and the CI proofs iterate.
"""

from __future__ import annotations

from .family import GemmFamily, KernelFamily, ProofCase, Tactic, VariantFamily
from .grouped_mm_fp4 import FAMILY as GROUPED_MM_FP4
from .mm_fp4 import FAMILY as MM_FP4
from .mma_probe import FAMILY as MMA_PROBE
from .moe_glue import FAMILY as MOE_GLUE
from .quantize import FAMILY as QUANTIZE

FAMILIES: dict[str, KernelFamily] = {f.name: f for f in (MMA_PROBE, MM_FP4, GROUPED_MM_FP4, QUANTIZE, MOE_GLUE)}

__all__ = ["FAMILIES", "GROUPED_MM_FP4", "MMA_PROBE", "MM_FP4", "MOE_GLUE", "QUANTIZE", "GemmFamily", "KernelFamily",
           "ProofCase", "Tactic", "VariantFamily"]
