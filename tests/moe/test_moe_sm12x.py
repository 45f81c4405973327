# SPDX-License-Identifier: Apache-2.0
"""Rung 4 for the MoE: the grouped GEMM (W4A4 and W4A8, with and without GEMM1's fused activation epilogue), the fused
MoE and the FlashInfer-compatible cutlass_fused_moe natively on an SM120/SM121 GPU, with the same checks the SM90
emulation runs (flashinfer_sm12x.testing), W4A8 included. Skipped without such a GPU (and then not counted as
passing)."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import device_facts
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, FAMILY, W4A8_CANDIDATES
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import check_bad_inputs_rejected_before_launch as check_errors
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_grouped_case as check_grouped
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_swiglu_quantize_case as check_swiglu_quantize
from flashinfer_sm12x.testing.moe_cases import check_cuda_graph_capture_and_replay as check_graph
from flashinfer_sm12x.testing.moe_cases import check_cutlass_fused_moe_compat as check_cutlass_compat
from flashinfer_sm12x.testing.moe_cases import check_fused_epilogue_matches_unfused as check_fused_vs_unfused
from flashinfer_sm12x.testing.moe_cases import check_launches_per_forward as check_launches
from flashinfer_sm12x.testing.moe_cases import check_skewed_routing as check_skew
from flashinfer_sm12x.testing.moe_cases import run_fused_case as check_fused

pytestmark = pytest.mark.sm12x


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2880), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    if tactic not in FAMILY.shipped("mxfp4", device_facts(0).target):
        pytest.skip(f"{tactic.name} is not in the proven grouped menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k)


@pytest.mark.parametrize("tactic", W4A8_CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2944), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_w4a8_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    if tactic not in FAMILY.shipped("mxfp8_mxfp4", device_facts(0).target):
        pytest.skip(f"{tactic.name} is not in the proven W4A8 grouped menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k, act="mxfp8")


@pytest.mark.parametrize(("fmt", "tactic"), [*(("mxfp4", t) for t in CANDIDATES),
                                             *(("mxfp8_mxfp4", t) for t in W4A8_CANDIDATES)],
                         ids=lambda v: v if isinstance(v, str) else v.name)
@pytest.mark.parametrize("variant", ["gpt-oss", "residue-fp32-bias-per-expert", "swiglu-g1-no-limit"])
def test_gemm1_fused_activation_epilogue_is_bit_identical(fmt: str, tactic, variant: str) -> None:
    if tactic not in FAMILY.shipped(fmt, device_facts(0).target) or \
            not FAMILY.serves("swiglu_quantize", fmt, tactic):
        pytest.skip(f"{tactic.name} does not ship the fused epilogue for {fmt} on this GPU's target")
    act, k = ("mxfp4", 2880) if fmt == "mxfp4" else ("mxfp8", 2944)
    if variant == "gpt-oss":
        check_swiglu_quantize(tactic, 3, 2, 2880, k, act)
    elif variant == "residue-fp32-bias-per-expert":
        check_swiglu_quantize(tactic, 4, 3, 160, 384, act, bias_dtype=torch.float32, per_expert=True)
    else:
        check_swiglu_quantize(tactic, 5, 4, 192, 384, act, activation="swiglu", g1=True, limit=None)


@pytest.mark.parametrize(("num_e", "num_t", "act"), [(32, 1, "mxfp4"), (32, 64, "mxfp8"), (128, 1000, "mxfp4"),
                                                     (32, 8192, "mxfp8")])
def test_fused_moe_fused_epilogue_matches_unfused(num_e: int, num_t: int, act: str) -> None:
    check_fused_vs_unfused(num_e, num_t, act)


@pytest.mark.parametrize("fused_epilogue", [True, False])
@pytest.mark.parametrize("num_t", [1, 12, 32, 64, 8192])
def test_fused_moe_launches_per_forward(num_t: int, fused_epilogue: bool) -> None:
    """4 launches at decode sizes (plan_scatter within one wave of this GPU's SMs), 5 beyond; one more unfused."""
    assert check_launches(num_t, fused_epilogue, act="mxfp8") <= (5 if fused_epilogue else 6)


def test_grouped_bad_inputs() -> None:
    check_errors()


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (32, 64), (32, 1000), (32, 8192), (128, 1),
                                              (128, 64)])
def test_fused_moe_matches_reference(num_e: int, num_t: int) -> None:
    check_fused(num_e, num_t)


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 64), (32, 1000), (128, 3), (128, 8192)])
def test_fused_moe_w4a8_matches_reference(num_e: int, num_t: int) -> None:
    check_fused(num_e, num_t, act="mxfp8")


@pytest.mark.parametrize("num_t", [1, 64, 1000])
def test_cutlass_fused_moe_compat_matches_reference(num_t: int) -> None:
    """FlashInfer's calling convention (as vLLM uses it on SM100), run by our kernels."""
    check_cutlass_compat(num_t)


def test_fused_moe_skewed_routing() -> None:
    check_skew()


def test_fused_moe_cuda_graph() -> None:
    check_graph()
