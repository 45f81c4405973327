# SPDX-License-Identifier: Apache-2.0
"""Rung 4 for the MoE: the grouped GEMM (W4A4 and W4A8), the fused MoE and the FlashInfer-compatible
cutlass_fused_moe natively on an SM120/SM121 GPU, with the same checks the SM90 emulation runs
(flashinfer_sm12x.testing); W4A8, which SM90 cannot emulate yet, runs here only. Skipped without such a GPU (and
then not counted as passing)."""

from __future__ import annotations

import pytest
import torch

import flashinfer_sm12x
from flashinfer_sm12x.formats import mxfp8_quantize
from flashinfer_sm12x.jit.arch import device_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, FAMILY, W4A8_CANDIDATES
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import check_bad_inputs_rejected_before_launch as check_errors
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_grouped_case as check_grouped
from flashinfer_sm12x.testing.moe_cases import TOL, H, make_inputs, rel_l2, weights
from flashinfer_sm12x.testing.moe_cases import check_cuda_graph_capture_and_replay as check_graph
from flashinfer_sm12x.testing.moe_cases import check_skewed_routing as check_skew
from flashinfer_sm12x.testing.moe_cases import run_fused_case as check_fused

pytestmark = pytest.mark.sm12x


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2880), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    if tactic not in FAMILY.shipped("mxfp4", device_target(torch.device("cuda", 0))):
        pytest.skip(f"{tactic.name} is not in the proven grouped menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k)


@pytest.mark.parametrize("tactic", W4A8_CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2944), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_w4a8_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    if tactic not in FAMILY.shipped("mxfp8_mxfp4", device_target(torch.device("cuda", 0))):
        pytest.skip(f"{tactic.name} is not in the proven W4A8 grouped menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k, act="mxfp8")


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
    raw, w = weights(32, "mxfp8", interleaved=False, up_first=True)
    hidden, logits = make_inputs(num_t, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    scales = torch.softmax(logits.gather(1, ids.long()), dim=1)
    xq, xsf = mxfp8_quantize(torch.nn.functional.pad(hidden.float(), (0, w.hidden_size_padded - H)), True, 32)
    per_e = {n: torch.full((32,), v, device="cuda") for n, v in (("swiglu_alpha", 1.702), ("swiglu_beta", 1.0),
                                                                  ("swiglu_limit", 7.0))}
    got = flashinfer_sm12x.cutlass_fused_moe(xq, ids, scales, w.w13, w.w2, torch.bfloat16, w.flashinfer_quant_scales(),
                                             w.w13_bias, w.w2_bias, xsf, use_mxfp8_act_scaling=True, **per_e)
    ref = gpt_oss_moe_reference(hidden, (ids, scales), **raw, act_quant="mxfp8")
    assert got.isfinite().all() and rel_l2(got[:, :H], ref) < TOL


def test_fused_moe_skewed_routing() -> None:
    check_skew()


def test_fused_moe_cuda_graph() -> None:
    check_graph()
