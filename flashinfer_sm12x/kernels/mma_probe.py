# SPDX-License-Identifier: Apache-2.0
"""The MXFP4 block-scaled MMA probe family (include/flashinfer_sm12x/probe/mma_probe.cuh, jit/mma_probe.cu.jinja):
one warp computes D[16, 8] over K = 64 * k_tiles with the native instruction. The foundation's compile-proof kernel
and, on SM12x hardware, the check of the instruction's fragment and scale-lane layouts."""

from __future__ import annotations

from dataclasses import dataclass

from ..jit.arch import Target
from ..jit.module import ModuleSpec, Source
from ..jit.render import render
from .family import NATIVE_MMA, ProofCase

MENU = {"k_tiles": (1, 2, 4)}


def mma_probe_spec(target: Target, k_tiles: int = 1) -> ModuleSpec:
    text = render("mma_probe.cu.jinja", {"k_tiles": k_tiles}, MENU)
    return ModuleSpec(op="mma_probe", group=f"mxfp4_k{64 * k_tiles}", target=target,
                      sources=(Source("mma_probe.cu", text),))


@dataclass(frozen=True)
class MmaProbeFamily:
    name: str = "mma_probe"

    def prebuild(self, target: Target) -> list[ModuleSpec]:
        # Native instruction only: no SM90 build.
        return [] if target.emulated else [mma_probe_spec(target, k) for k in MENU["k_tiles"]]

    def proof_cases(self, target: Target, *, candidates: bool = False) -> list[ProofCase]:
        ks = MENU["k_tiles"] if candidates else (1,)
        return [ProofCase(f"mma_probe/k{64 * k}", mma_probe_spec(target, k), NATIVE_MMA["mxfp4"], no_spills=True)
                for k in ks] if not target.emulated else []


FAMILY = MmaProbeFamily()
