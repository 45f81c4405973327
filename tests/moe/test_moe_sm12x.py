# SPDX-License-Identifier: Apache-2.0
"""Rung 4 for the MoE: the fused MoE (W4A4 and W4A8, fused and unfused GEMM1 epilogue) and the FlashInfer-compatible
cutlass_fused_moe natively on an SM120/SM121 GPU, with the same checks the SM90 emulation runs
(flashinfer_sm12x.testing). The grouped GEMM's own native tests are tests/grouped_mm_fp4/test_sm12x.py. Skipped
without such a GPU (and then not counted as passing)."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.testing.moe_cases import check_cuda_graph_capture_and_replay as check_graph
from flashinfer_sm12x.testing.moe_cases import check_cutlass_fused_moe_compat as check_cutlass_compat
from flashinfer_sm12x.testing.moe_cases import check_fused_epilogue_matches_unfused as check_fused_vs_unfused
from flashinfer_sm12x.testing.moe_cases import check_launches_per_forward as check_launches
from flashinfer_sm12x.testing.moe_cases import check_skewed_routing as check_skew
from flashinfer_sm12x.testing.moe_cases import run_fused_case as check_fused

pytestmark = pytest.mark.sm12x


@pytest.mark.parametrize(("num_e", "num_t", "act"), [(32, 1, "mxfp4"), (32, 64, "mxfp8"), (128, 1000, "mxfp4"),
                                                     (32, 8192, "mxfp8")])
def test_fused_moe_fused_epilogue_matches_unfused(num_e: int, num_t: int, act: str) -> None:
    check_fused_vs_unfused(num_e, num_t, act)


@pytest.mark.parametrize("fused_epilogue", [True, False])
@pytest.mark.parametrize("num_t", [1, 12, 32, 64, 8192])
def test_fused_moe_launches_per_forward(num_t: int, fused_epilogue: bool) -> None:
    """4 launches at decode sizes (plan_scatter within one wave of this GPU's SMs), 5 beyond; one more unfused."""
    assert check_launches(num_t, fused_epilogue, act="mxfp8") <= (5 if fused_epilogue else 6)


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
