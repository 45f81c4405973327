"""Rung 4 for the MoE: the grouped MXFP4 GEMM and the fused MoE natively on an SM120/SM121 GPU, with the same
checks the H100 emulation runs (imported from tests/emulation). Skipped without such a GPU (and then not
counted as passing)."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import target_for_device
from flashinfer_sm12x.ops.grouped_mm_fp4 import CANDIDATES, shipped
from tests.emulation.test_fused_moe_emulated import test_cuda_graph_capture_and_replay as check_graph
from tests.emulation.test_fused_moe_emulated import test_fused_moe_matches_reference as check_fused
from tests.emulation.test_fused_moe_emulated import test_skewed_routing_one_expert_gets_every_token as check_skew
from tests.emulation.test_grouped_mm_fp4_emulated import test_bad_inputs_rejected_before_launch as check_errors
from tests.emulation.test_grouped_mm_fp4_emulated import test_grouped_matches_per_tile_reference as check_grouped

pytestmark = pytest.mark.sm12x


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_e", "tiles", "n", "k"), [(4, 5, 200, 128), (3, 3, 264, 2880), (8, 6, 136, 640)],
                         ids=lambda v: str(v))
def test_grouped_matches_per_tile_reference(tactic, num_e: int, tiles: int, n: int, k: int) -> None:
    if tactic not in shipped(target_for_device(torch.cuda.get_device_capability())):
        pytest.skip(f"{tactic.name} is not in the proven grouped menu for this GPU's target")
    check_grouped(tactic, num_e, tiles, n, k)


def test_grouped_bad_inputs() -> None:
    check_errors()


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (32, 64), (32, 1000), (32, 8192), (128, 1),
                                              (128, 64)])
def test_fused_moe_matches_reference(num_e: int, num_t: int) -> None:
    check_fused(num_e, num_t)


def test_fused_moe_skewed_routing() -> None:
    check_skew()


def test_fused_moe_cuda_graph() -> None:
    check_graph()
