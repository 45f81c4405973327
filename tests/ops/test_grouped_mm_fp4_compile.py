"""Rung 2 in CI for the MoE GEMM: one grouped config per tile family (the 64-row mainloop and a 128-row
CUTLASS collective behind the byte-TMA, per-expert-B producer) for sm_120a and sm_121a. Full menu:
scripts/compile_sweep.py --op grouped_mm_fp4 --candidates."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import SM120_SMEM_CAPACITY, compile_proof
from flashinfer_sm12x.ops.grouped_mm_fp4 import Tactic, grouped_mm_fp4_spec

pytestmark = [pytest.mark.compile_proof, pytest.mark.slow]


@pytest.mark.parametrize(("arch", "tactic"), [("sm_121a", Tactic("pingpong", 64, 128, 128)),
                                              ("sm_120a", Tactic("cooperative", 128, 128, 128))],
                         ids=["sm_121a-m64", "sm_120a-cooperative128"])
def test_grouped_config_compiles_with_native_mma(arch: str, tactic: Tactic) -> None:
    report = compile_proof(grouped_mm_fp4_spec(parse_target(arch), tactic, torch.bfloat16))
    kernel = report.require(instruction="OMMA.SF", no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY)
    assert report.stages and report.stages >= 2 and kernel.count("HMMA") == 0
