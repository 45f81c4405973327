# SPDX-License-Identifier: Apache-2.0
"""benchmarks/moe_traffic.py's byte model: the properties the README's table rests on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("moe_traffic", Path(__file__).parents[1] / "benchmarks/moe_traffic.py")
traffic = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(traffic)


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("num_t", [1, 32, 33, 1024, 8192])
def test_fused_epilogues_move_fewer_bytes_and_launch_fewer_kernels(num_t: int, act: str) -> None:
    fused, unfused = traffic.ours(num_t, 32, act, True, "sm_121a"), traffic.ours(num_t, 32, act, False, "sm_121a")
    assert sum(fused.values()) < sum(unfused.values())
    assert traffic.launches(fused) == traffic.launches(unfused) - 1 == (4 if num_t <= 32 else 5)
    # Unfused, GEMM1 writes every padded row of the [rows, 2I] bf16 intermediate; fused, the routed rows of GEMM2's
    # quantized operand instead.
    rows = traffic.row_plan(num_t, 4, 32, "mxfp4" if act == "mxfp4" else "mxfp8_mxfp4", None,
                            traffic.parse_target("sm_121a")).bound
    ip = traffic.round_up(traffic.INTER, 128)
    pairs = num_t * 4
    assert unfused["GEMM1"] - fused["GEMM1 + activation"] == \
        rows * 2 * ip * 2 - int(pairs * ip * traffic.ACTS[act]) - pairs * ip // 32


def test_flashinfer_pipeline_writes_the_bf16_intermediate_once_and_reads_it_once() -> None:
    fi = traffic.flashinfer(16, 32, "mxfp8")
    pairs, inter = 16 * 4, traffic.INTER
    assert fi["GEMM1"] - fi["doActivation"] == (pairs * traffic.H + traffic.scales(pairs, traffic.H)) - (
        pairs * inter + traffic.scales(pairs, inter))
    assert traffic.launches(fi) == 7


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("num_e", [32, 128])
@pytest.mark.parametrize("num_t", [1, 64])
def test_decode_moves_no_more_bytes_than_flashinfer(num_t: int, num_e: int, act: str) -> None:
    """Issue #21's padded reads at decode: with A's rows bounded per expert the GEMMs read the T*k routed rows of A
    (plus their scales' 128-row atoms per M tile), so the fused pipeline moves no more than FlashInfer's."""
    fused = traffic.ours(num_t, num_e, act, True, "sm_121a")
    assert sum(fused.values()) <= sum(traffic.flashinfer(num_t, num_e, act).values())


def test_gemms_read_the_routed_rows_of_a_and_every_tiles_scale_atoms() -> None:
    num_t, num_e, act = 1, 32, "mxfp8"
    plan = traffic.row_plan(num_t, 4, num_e, "mxfp8_mxfp4", None, traffic.parse_target("sm_121a"))
    hp, ip, pairs = traffic.round_up(traffic.H, 128), traffic.round_up(traffic.INTER, 128), num_t * 4
    fused = traffic.ours(num_t, num_e, act, True, "sm_121a")
    assert fused["GEMM2"] == pairs * ip + traffic.scales(plan.bound, ip) + pairs * hp * 2
    assert fused["GEMM1 + activation"] == pairs * hp + traffic.scales(plan.bound, hp) + pairs * ip + pairs * ip // 32
