# SPDX-License-Identifier: Apache-2.0
"""Rung 3 for the MoE GEMM: grouped_mm_fp4 built for sm_90a with the emulated MMA atom, on an H100, against a
float64 per-tile reference (each M tile times the weights of the expert expert_of_tile names). W4A4 and W4A8
(MXFP8 activations: the W4A8 tactics the emulated build ships)."""

from __future__ import annotations

import os

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, FAMILY
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import (
    check_bad_inputs_rejected_before_launch,
    run_expert_rows_case,
    run_grouped_case,
)
from flashinfer_sm12x.testing.workloads import prebuild_for_tests

W4A8_TACTICS = FAMILY.shipped("mxfp8_mxfp4", parse_target("sm_90a"))

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]


@pytest.fixture(scope="module", autouse=True)
def _prebuilt() -> None:
    os.environ.setdefault("FLASHINFER_SM12X_EMULATE", "1")
    specs = [FAMILY.spec(parse_target("sm_90a"), "mxfp4", t, torch.bfloat16) for t in CANDIDATES]
    specs += [FAMILY.spec(parse_target("sm_90a"), "mxfp8_mxfp4", t, torch.bfloat16) for t in W4A8_TACTICS]
    prebuild_for_tests(specs, "grouped_mm_fp4 emulation tests")


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2880), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    run_grouped_case(tactic, num_e, tiles, n, k)


@pytest.mark.parametrize("tactic", W4A8_TACTICS, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2944), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_w4a8_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    run_grouped_case(tactic, num_e, tiles, n, k, act="mxfp8")


def test_bad_inputs_rejected_before_launch() -> None:
    check_bad_inputs_rejected_before_launch()


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
def test_expert_rows_bound_a_reads(tactic) -> None:
    run_expert_rows_case(tactic, 256, 640)


@pytest.mark.parametrize("tactic", W4A8_TACTICS, ids=lambda t: t.name)
def test_expert_rows_bound_a_reads_w4a8(tactic) -> None:
    run_expert_rows_case(tactic, 200, 640, act="mxfp8")
