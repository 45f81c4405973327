# SPDX-License-Identifier: Apache-2.0
"""Rung 4 for the grouped GEMM: W4A4 and W4A8, with and without GEMM1's fused activation epilogue, natively on an
SM120/SM121 GPU, with the same checks the SM90 emulation runs (flashinfer_sm12x.testing). Skipped without such a GPU
(and then not counted as passing)."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import device_facts
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, FAMILY, W4A8_CANDIDATES
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import check_bad_inputs_rejected_before_launch as check_errors
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_expert_rows_case as check_expert_rows
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_grouped_case as check_grouped
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_swiglu_quantize_case as check_swiglu_quantize

pytestmark = pytest.mark.sm12x


def _check_shipped(fmt: str, tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    """The per-tile reference check of a tactic this GPU's target ships for `fmt` (skipped otherwise)."""
    if tactic not in FAMILY.shipped(fmt, device_facts(0).target):
        what = "grouped" if fmt == "mxfp4" else "W4A8 grouped"
        pytest.skip(f"{tactic.name} is not in the proven {what} menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k, **({} if fmt == "mxfp4" else {"act": "mxfp8"}))


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2880), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    _check_shipped("mxfp4", tactic, num_e, tiles, n, k)


@pytest.mark.parametrize("tactic", W4A8_CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2944), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_w4a8_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    _check_shipped("mxfp8_mxfp4", tactic, num_e, tiles, n, k)


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


def test_grouped_bad_inputs() -> None:
    check_errors()


@pytest.mark.parametrize(("fmt", "tactic"), [*(("mxfp4", t) for t in CANDIDATES),
                                             *(("mxfp8_mxfp4", t) for t in W4A8_CANDIDATES)],
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_expert_rows_bound_a_reads(fmt: str, tactic) -> None:
    """A's rows bounded per expert (per-SM descriptor slots on SM12x): counted rows bit-identical to the unbounded
    GEMM, padding rows of A not read."""
    if tactic not in FAMILY.shipped(fmt, device_facts(0).target):
        pytest.skip(f"{tactic.name} is not in the proven {fmt} grouped menu for this GPU's target")
    check_expert_rows(tactic, 256 if fmt == "mxfp4" else 200, 640, act="mxfp4" if fmt == "mxfp4" else "mxfp8")
