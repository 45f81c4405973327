# SPDX-License-Identifier: Apache-2.0
"""Rung 2 in CI for the MoE GEMM: one grouped config per mainloop family (the 64-row mainloop, a 128-row CUTLASS
collective behind the byte-TMA per-expert-B producer, and W4A8's CUTLASS collective behind the per-expert batch
remap) for sm_120a and sm_121a. Full menus: scripts/compile_sweep.py --family grouped_mm_fp4 --candidates."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import (
    MAINLOOP_MAX_MMA_FREE,
    MAINLOOP_MMAS_UNDER_WAIT,
    SM120_SMEM_CAPACITY,
    compile_proof,
)
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY

pytestmark = [pytest.mark.compile_proof, pytest.mark.slow]


@pytest.mark.parametrize(("arch", "fmt", "tactic", "mma"), [
    ("sm_121a", "mxfp4", Tactic("pingpong", 64, 128, 128), "OMMA.SF"),
    ("sm_120a", "mxfp4", Tactic("cooperative", 128, 128, 128), "OMMA.SF"),
    ("sm_121a", "mxfp8_mxfp4", Tactic("pingpong", 128, 64, 128), "QMMA.SF.16832.F32.E4M3.E2M1"),
], ids=["sm_121a-m64", "sm_120a-cooperative128", "sm_121a-w4a8-pingpong128x64"])
def test_grouped_config_compiles_with_native_mma(arch: str, fmt: str, tactic: Tactic, mma: str) -> None:
    report = compile_proof(FAMILY.spec(parse_target(arch), fmt, tactic, torch.bfloat16))
    kernel = report.require(instruction=mma, no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY,
                            min_mmas_under_wait=MAINLOOP_MMAS_UNDER_WAIT, max_mma_free=MAINLOOP_MAX_MMA_FREE)
    assert report.stages and report.stages >= 2 and kernel.count("HMMA") == 0


@pytest.mark.parametrize(("arch", "fmt", "tactic", "mma"), [
    ("sm_121a", "mxfp4", Tactic("pingpong", 64, 128, 128), "OMMA.SF"),
    ("sm_120a", "mxfp8_mxfp4", Tactic("pingpong", 128, 64, 128), "QMMA.SF.16832.F32.E4M3.E2M1"),
], ids=["sm_121a-m64", "sm_120a-w4a8-pingpong128x64"])
def test_gemm1_with_fused_activation_epilogue_compiles(arch: str, fmt: str, tactic: Tactic, mma: str) -> None:
    """GEMM1 with fc1 bias + SwiGLU + quantization in its epilogue: native MMA, no mainloop spills, the staging band
    included in the shared memory, the conversion to GEMM2's format in SASS (F2FP for E2M1 / E4M3 pairs)."""
    report = compile_proof(FAMILY.spec(parse_target(arch), fmt, tactic, torch.bfloat16, "swiglu_quantize"))
    kernel = report.require(instruction=mma, no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY,
                            min_mmas_under_wait=MAINLOOP_MMAS_UNDER_WAIT, max_mma_free=MAINLOOP_MAX_MMA_FREE)
    assert report.stages and report.stages >= 2 and kernel.count("HMMA") == 0
    assert kernel.count("F2FP") > 0, sorted(op for op in kernel.instructions if op.startswith("F2"))
    print(f"{arch} {fmt} {tactic.name} swiglu_quantize: {report.stages} stages, "
          f"{kernel.static_smem + (report.dynamic_smem or 0)} B smem, {kernel.registers} registers, "
          f"spills {kernel.spill_stores} B stored / {kernel.spill_loads} B loaded (outside the mainloop)")


def test_gemm2_routed_rows_store_compiles() -> None:
    """GEMM2's routed-rows store (registers to global, no shared memory of its own): native MMA, no mainloop spills."""
    report = compile_proof(FAMILY.spec(parse_target("sm_121a"), "mxfp4", Tactic("pingpong", 64, 128, 128),
                                       torch.bfloat16, "store_routed"))
    kernel = report.require(instruction="OMMA.SF", no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY,
                            min_mmas_under_wait=MAINLOOP_MMAS_UNDER_WAIT, max_mma_free=MAINLOOP_MAX_MMA_FREE)
    assert report.stages and report.stages >= 2 and kernel.count("HMMA") == 0
