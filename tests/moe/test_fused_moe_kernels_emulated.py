# SPDX-License-Identifier: Apache-2.0
"""The fused MoE's kernel pipeline (impl="kernels": glue kernels + two grouped GEMMs, GEMM1 with the activation in its
epilogue where the weights allow) on an H100/H200 with the emulated MMA atom: against impl="reference" (the torch
pipeline: same quantization points, so the two agree far closer than either agrees with float64), against the float64
GPT-OSS reference, in every weight layout; the fused epilogue bit-identical to the unfused pipeline; launches per
forward: 4 at decode sizes (T <= 32: plan_scatter, GEMM1 + activation, GEMM2, finalize), 5 beyond; one more unfused.
(tests/moe/test_fused_moe_emulated.py runs the default impl, which is "kernels" on CUDA, over the GPT-OSS shapes,
skewed routing and CUDA graphs.)"""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.testing.moe_cases import (
    TOL,
    H,
    check_fused_epilogue_matches_unfused,
    check_launches_per_forward,
    make_inputs,
    rel_l2,
    weights,
)

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]
# Kernels vs torch pipeline: they differ only where the activation's exp rounds differently (a re-quantized code
# flips) and in the routing weights' last bit.
KERNELS_VS_TORCH = 2e-3


@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (32, 64), (32, 1000), (32, 8192), (128, 1), (128, 3),
                                              (128, 64), (128, 1000), (128, 8192)])
def test_kernels_match_the_torch_pipeline_and_the_reference(num_e: int, num_t: int) -> None:
    raw, w = weights(num_e)
    hidden, logits = make_inputs(num_t, H, num_e)
    hidden, logits = hidden.cuda(), logits.cuda()
    got = fused_moe(hidden, logits, w, top_k=4, impl="kernels")
    torch_path = fused_moe(hidden, logits, w, top_k=4, impl="reference")
    assert got.isfinite().all()
    assert rel_l2(got, torch_path.double()) < KERNELS_VS_TORCH
    ref = gpt_oss_moe_reference(hidden, logits, **raw, top_k=4, act_quant="mxfp4")
    assert rel_l2(got, ref) < TOL


@pytest.mark.parametrize(("interleaved", "up_first", "activation"), [(False, False, "swiglu_oai"),
                                                                     (False, True, "swiglu_oai"),
                                                                     (True, False, "swiglu")])
def test_every_weight_layout_and_activation(interleaved: bool, up_first: bool, activation: str) -> None:
    _, w = weights(32, interleaved=interleaved, up_first=up_first)
    hidden, logits = make_inputs(70, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    got = fused_moe(hidden, logits, w, top_k=4, activation=activation, impl="kernels")
    want = fused_moe(hidden, logits, w, top_k=4, activation=activation, impl="reference")
    assert rel_l2(got, want.double()) < KERNELS_VS_TORCH


def test_precomputed_ids_with_empty_experts_and_fp32_output() -> None:
    _, w = weights(32)
    hidden, _ = make_inputs(300, H, 32)
    ids = torch.tensor([[5, 0, 1, 2]], dtype=torch.int64).repeat(300, 1).cuda()
    topk = torch.full((300, 4), 0.25, device="cuda", dtype=torch.bfloat16)
    got = fused_moe(hidden.cuda(), (ids, topk), w, impl="kernels", out_dtype=torch.float32)
    want = fused_moe(hidden.cuda(), (ids, topk), w, impl="reference", out_dtype=torch.float32)
    assert got.dtype == torch.float32 and rel_l2(got, want.double()) < KERNELS_VS_TORCH


def test_out_of_range_ids_raise_on_the_host_or_clamp_when_unchecked() -> None:
    _, w = weights(32)
    hidden, _ = make_inputs(4, H, 32)
    ids = torch.tensor([[0, 1, 2, 40]] * 4, dtype=torch.int32).cuda()
    topk = torch.full((4, 4), 0.25, device="cuda")
    with pytest.raises(ValueError, match="outside"):
        fused_moe(hidden.cuda(), (ids, topk), w, impl="kernels")
    got = fused_moe(hidden.cuda(), (ids, topk), w, impl="kernels", validate_ids=False)
    want = fused_moe(hidden.cuda(), (ids, topk), w, impl="reference", validate_ids=False)
    assert rel_l2(got, want.double()) < KERNELS_VS_TORCH


@pytest.mark.parametrize(("num_t", "fused", "most"), [(1, True, 4), (32, True, 4), (64, True, 5), (8192, True, 5),
                                                     (1, False, 5), (32, False, 5), (8192, False, 6)])
def test_launches_per_forward(num_t: int, fused: bool, most: int) -> None:
    assert check_launches_per_forward(num_t, fused) <= most  # (an H200's 132 SMs hold T = 32's 128 CTAs: one wave)


@pytest.mark.parametrize(("num_e", "num_t", "act"), [(32, 1, "mxfp4"), (32, 3, "mxfp8"), (32, 64, "mxfp4"),
                                                     (128, 64, "mxfp8"), (32, 1000, "mxfp8"), (128, 1000, "mxfp4"),
                                                     (32, 8192, "mxfp4")])
def test_fused_epilogue_is_bit_identical_to_the_unfused_pipeline(num_e: int, num_t: int, act: str) -> None:
    check_fused_epilogue_matches_unfused(num_e, num_t, act)


def test_fused_epilogue_needs_interleaved_weights() -> None:
    _, w = weights(32, interleaved=False, up_first=True)
    hidden, logits = make_inputs(4, H, 32)
    with pytest.raises(ValueError, match="interleaved"):
        fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4, fused_epilogue=True)


@pytest.mark.parametrize("num_t", [1, 64, 300])  # plan_scatter at T <= 32, plan + scatter beyond
def test_cuda_graph_replays_the_kernel_pipeline(num_t: int) -> None:
    _, w = weights(32)
    hidden, logits = make_inputs(num_t, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    eager = fused_moe(hidden, logits, w, top_k=4, impl="kernels")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fused_moe(hidden, logits, w, top_k=4, impl="kernels", validate_ids=False)
    for _ in range(3):  # the plan's done counter must be back at zero after every replay
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, eager)
    logits.mul_(-1)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, fused_moe(hidden, logits, w, top_k=4, impl="kernels"))


def test_cached_gemm_launcher_does_not_keep_weights_alive() -> None:
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES
    from flashinfer_sm12x.ops.grouped_mm_fp4 import grouped_mm_fp4_launcher
    a = torch.zeros(64, 64, dtype=torch.uint8, device="cuda")
    sf = torch.zeros(128 * 4, dtype=torch.uint8, device="cuda")
    b = torch.zeros(2, 64, 64, dtype=torch.uint8, device="cuda")
    b_sf = torch.zeros(2 * 128 * 4, dtype=torch.uint8, device="cuda")
    out = torch.empty(64, 64, dtype=torch.bfloat16, device="cuda")
    launch = grouped_mm_fp4_launcher(a, sf, b, b_sf, torch.zeros(1, dtype=torch.int32, device="cuda"), CANDIDATES[0],
                                     out, fmt="mxfp4")
    assert launch() is out
    del b
    with pytest.raises(RuntimeError, match="freed"):
        launch()


@pytest.mark.parametrize(("act", "pair"), [("mxfp8", ("pingpong:128x64", "pingpong:128x32")),
                                           ("mxfp4", ("pingpong:64x128", "pingpong:64x128")),
                                           ("mxfp4", ("pingpong:128x128", "cooperative:128x128"))])
def test_each_gemm_runs_its_own_tactic(act: str, pair: tuple[str, str]) -> None:
    """A (GEMM1, GEMM2) pair of different tiles sharing tile_m (the wave-aware choice on a 170-SM part: W4A8 128x64 then
    128x32) against the reference pipeline with the same pair, and against the single-tactic run bit for bit where the
    GEMM2 tile only changes the order of independent tiles (a GEMM's rows do not depend on its tile width)."""
    from flashinfer_sm12x.kernels.family import Tactic

    def tactic(text: str) -> Tactic:
        schedule, shape = text.split(":")
        m, n = (int(v) for v in shape.split("x"))
        return Tactic(schedule, m, n, 128)

    _, w = weights(32, act=act)
    hidden, logits = make_inputs(7, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    gemm1, gemm2 = tactic(pair[0]), tactic(pair[1])
    got = fused_moe(hidden, logits, w, top_k=4, impl="kernels", tactic=(gemm1, gemm2))
    want = fused_moe(hidden, logits, w, top_k=4, impl="reference", tactic=(gemm1, gemm2))
    single = fused_moe(hidden, logits, w, top_k=4, impl="kernels", tactic=gemm1)
    assert got.isfinite().all()
    assert rel_l2(got, want.double()) < KERNELS_VS_TORCH
    assert torch.equal(got, single)
