# SPDX-License-Identifier: Apache-2.0
"""Rung 2 in CI for the MoE GEMM: one grouped config per mainloop family (the 64-row mainloop, a 128-row CUTLASS
collective behind the byte-TMA per-expert-B producer, and W4A8's CUTLASS collective behind the per-expert batch
remap) for sm_120a and sm_121a, with the MoE epilogues: native MMA, no mainloop spills, shared memory within the
SM120 budget, the mainloop's shape (compile_proof.mainloop_requirements), and GEMM1's fused activation epilogue at
most EPILOGUE_GROWTH times the plain kernel's code (it runs beside the other warp group's mainloop: instruction
cache). Full menus: scripts/compile_sweep.py --family grouped_mm_fp4 --candidates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import (
    SM120_SMEM_CAPACITY,
    CompileReport,
    compile_proof,
    mainloop_requirements,
)
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY

pytestmark = [pytest.mark.compile_proof, pytest.mark.slow]

M64 = Tactic("pingpong", 64, 128, 128)
W4A8_PP64 = Tactic("pingpong", 128, 64, 128)
W4A8_PP32 = Tactic("pingpong", 128, 32, 128)  # W4A8 GEMM2's decode tile on 170-SM parts (moe_tactics at T = 1)
MMA = {"mxfp4": "OMMA.SF", "mxfp8_mxfp4": "QMMA.SF.16832.F32.E4M3.E2M1"}
EPILOGUE_GROWTH = 1.5  # SASS instructions of GEMM1 with the fused activation over the same tile's plain store
# (arch, format, tactic, epilogue): every config the tests below read, compiled once, two at a time.
CONFIGS = [
    ("sm_121a", "mxfp4", M64, "store"),
    ("sm_120a", "mxfp4", Tactic("cooperative", 128, 128, 128), "store"),
    ("sm_121a", "mxfp8_mxfp4", W4A8_PP64, "store"),
    ("sm_120a", "mxfp8_mxfp4", W4A8_PP64, "store"),
    ("sm_121a", "mxfp4", M64, "swiglu_quantize"),
    ("sm_120a", "mxfp8_mxfp4", W4A8_PP64, "swiglu_quantize"),
    ("sm_121a", "mxfp4", M64, "store_routed"),
    ("sm_120a", "mxfp8_mxfp4", W4A8_PP32, "store_routed"),
]


@pytest.fixture(scope="module")
def reports() -> dict[tuple, CompileReport | Exception]:
    def prove(config: tuple) -> CompileReport | Exception:
        arch, fmt, tactic, epilogue = config
        try:
            return compile_proof(FAMILY.spec(parse_target(arch), fmt, tactic, "bfloat16", epilogue))
        except Exception as exc:  # reported by the test of that config
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:  # two CUTLASS TUs at a time: ~11 GB of host memory
        return dict(zip(CONFIGS, pool.map(prove, CONFIGS), strict=True))


def _proven(reports: dict, config: tuple) -> CompileReport:
    report = reports[config]
    if isinstance(report, Exception):
        raise report
    arch, fmt, tactic, _ = config
    kernel = report.require(instruction=MMA[fmt], no_mainloop_spills=True, max_smem=SM120_SMEM_CAPACITY,
                            **mainloop_requirements(tactic.tile_n, fmt))
    assert report.stages and report.stages >= 2 and kernel.count("HMMA") == 0
    return report


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[3] == "store"],
                         ids=lambda c: f"{c[0]}-{c[1]}-{c[2].name}")
def test_grouped_config_compiles_with_native_mma(reports: dict, config: tuple) -> None:
    _proven(reports, config)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[3] == "swiglu_quantize"],
                         ids=lambda c: f"{c[0]}-{c[1]}-{c[2].name}")
def test_gemm1_with_fused_activation_epilogue_compiles(reports: dict, config: tuple) -> None:
    """GEMM1 with fc1 bias + SwiGLU + quantization in its epilogue: native MMA, no mainloop spills, the staging band
    included in the shared memory, the conversion to GEMM2's format in SASS (F2FP for E2M1 / E4M3 pairs), and at
    most EPILOGUE_GROWTH times the code of the same tile's plain kernel; bias rows read in 16-byte vectors."""
    report = _proven(reports, config)
    kernel = report.kernel()
    arch, fmt, tactic, _ = config
    plain = _proven(reports, (arch, fmt, tactic, "store")).kernel()
    fused_size, plain_size = sum(kernel.instructions.values()), sum(plain.instructions.values())
    assert kernel.count("F2FP") > 0, sorted(op for op in kernel.instructions if op.startswith("F2"))
    assert fused_size <= EPILOGUE_GROWTH * plain_size, (fused_size, plain_size)
    assert kernel.count("LDG.E.U16") == 0 and kernel.count("LDG.E.128") > 0  # no scalar bias loads
    print(f"{arch} {fmt} {tactic.name} swiglu_quantize: {report.stages} stages, "
          f"{kernel.static_smem + (report.dynamic_smem or 0)} B smem, {kernel.registers} registers, {fused_size} "
          f"SASS instructions ({fused_size / plain_size:.2f}x the plain kernel's {plain_size}), "
          f"spills {kernel.spill_stores} B stored / {kernel.spill_loads} B loaded (outside the mainloop)")


def test_gemm2_routed_rows_store_compiles(reports: dict) -> None:
    """GEMM2's routed-rows store (registers to global, no shared memory of its own): native MMA, no mainloop spills;
    the routing tables are read once per tile, not per row."""
    kernel = _proven(reports, ("sm_121a", "mxfp4", M64, "store_routed")).kernel()
    plain = _proven(reports, ("sm_121a", "mxfp4", M64, "store")).kernel()
    assert kernel.count("LDG.E.CONSTANT") <= plain.count("LDG.E.CONSTANT") + 4


def test_w4a8_gemm2_decode_tile_routed_store_compiles(reports: dict) -> None:
    """The per-GEMM heuristic gives W4A8 GEMM2 Pingpong 128x32 at T = 1 on an RTX 5090 (368 CTAs instead of 184 in
    two waves): with the routed-rows store it keeps the native MMA, no mainloop spills and the N32 mainloop shape."""
    _proven(reports, ("sm_120a", "mxfp8_mxfp4", W4A8_PP32, "store_routed"))
