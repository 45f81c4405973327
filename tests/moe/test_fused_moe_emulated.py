# SPDX-License-Identifier: Apache-2.0
"""Rung 3 for the fused MoE: the whole op (routing, padding, both grouped MXFP4 GEMMs through the emulated MMA
atom, bias, swiglu_oai, re-quantization, finalize) on an H100 against the float64 GPT-OSS reference, at GPT-OSS
sizes (hidden = intermediate = 2880, padded to 2944 inside), E in {32, 128}, top-4, T in {1, 3, 64, 1000, 8192};
skewed routing; CUDA graphs. W4A8 (act="mxfp8": MXFP8 activations, the W4A8 grouped GEMMs) and the
FlashInfer-compatible cutlass_fused_moe, whose convention is W4A8."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.testing.moe_cases import (
    check_cuda_graph_capture_and_replay,
    check_cutlass_fused_moe_compat,
    check_skewed_routing,
    run_fused_case,
)

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (32, 64), (32, 1000), (32, 8192), (128, 1), (128, 3),
                                              (128, 64), (128, 1000), (128, 8192)])
def test_fused_moe_matches_reference(num_e: int, num_t: int) -> None:
    run_fused_case(num_e, num_t)


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 64), (32, 1000), (128, 3), (128, 8192)])
def test_fused_moe_w4a8_matches_reference(num_e: int, num_t: int) -> None:
    run_fused_case(num_e, num_t, act="mxfp8")


@pytest.mark.parametrize("num_t", [1, 64, 1000])
def test_cutlass_fused_moe_compat_matches_reference(num_t: int) -> None:
    """FlashInfer's calling convention (as vLLM uses it on SM100), run by the emulated W4A8 kernels."""
    check_cutlass_fused_moe_compat(num_t)


def test_skewed_routing_one_expert_gets_every_token() -> None:
    check_skewed_routing()


def test_cuda_graph_capture_and_replay() -> None:
    check_cuda_graph_capture_and_replay()
