# SPDX-License-Identifier: Apache-2.0
"""Rung 3: every shipped mm_fp4 tactic built for sm_90a with the emulated block-scaled MMA atom, run on an
H100 against the float64 reference. Everything but the one MMA instruction is the SM12x code path: the
CUTLASS collective, TMA loads, scale-factor layouts, smem->register copies, epilogue, scheduler swap aside.
W4A8 (MXFP8 x MXFP4) also swaps its FP4 operand's smem path (packed byte image, emulated unpacking ldmatrix)."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x import mm_fp4, mm_mxfp8_mxfp4
from flashinfer_sm12x.formats import mxfp4_quantize, nvfp4_quantize
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.mm_fp4 import CANDIDATES, FAMILY
from flashinfer_sm12x.testing.gemm_reference import mm_mxfp8_mxfp4_reference
from flashinfer_sm12x.testing.mm_fp4_cases import SHAPES, make_operands, prebuild, run_and_check, selected_cases

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]


@pytest.fixture(scope="module", autouse=True)
def _prebuilt(request: pytest.FixtureRequest) -> None:
    prebuild(selected_cases(request, CASES + W4A8_CASES), parse_target("sm_90a"))


W4A4_FORMATS = ("mxfp4", "nvfp4")
# W4A4: every candidate config (not only the shipped menu) in bf16; fp16 output on the two base schedules and on
# the 64-row mainloop (ours, not CUTLASS's).
CASES = [(f, t, torch.bfloat16) for f in W4A4_FORMATS for t in CANDIDATES]
CASES += [(f, t, torch.float16) for f in W4A4_FORMATS for t in CANDIDATES if t in CANDIDATES[:2] or t.tile_m == 64]
# W4A8: every tactic the emulated build ships (sm_120a's menu) in bf16, Cooperative 128x128 also in fp16.
W4A8_TACTICS = FAMILY.shipped("mxfp8_mxfp4", parse_target("sm_90a"))
W4A8_CASES = [("mxfp8_mxfp4", t, torch.bfloat16) for t in W4A8_TACTICS]
W4A8_CASES += [("mxfp8_mxfp4", t, torch.float16) for t in W4A8_TACTICS if t == CANDIDATES[1]]
# W4A8 needs K % 128 == 0: the SHAPES whose K is, plus GPT-OSS's hidden size padded to 128 (2944) for 2880.
W4A8_SHAPES = [s for s in SHAPES if s[2] % 128 == 0] + [(128, 264, 2944)]


def _case_ids(cases: list) -> list[str]:
    return [f"{f}-{t.name}-{str(o).split('.')[-1]}" for f, t, o in cases]


@pytest.mark.parametrize(("fmt", "tactic", "out_dtype"), CASES, ids=_case_ids(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tactic_matches_reference(fmt: str, tactic, out_dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    m, n, k = shape
    run_and_check(fmt, tactic, out_dtype, m, n, k, with_alpha=(m % 2 == 1), seed=m * 7 + k)


@pytest.mark.parametrize(("fmt", "tactic", "out_dtype"), W4A8_CASES, ids=_case_ids(W4A8_CASES))
@pytest.mark.parametrize("shape", W4A8_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_w4a8_tactic_matches_reference(fmt: str, tactic, out_dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    m, n, k = shape
    run_and_check(fmt, tactic, out_dtype, m, n, k, with_alpha=(m % 2 == 1), seed=m * 7 + k)


def test_w4a8_public_api_emulated() -> None:
    ops = make_operands("mxfp8_mxfp4", 300, 200, 640, seed=5)
    out = mm_mxfp8_mxfp4(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"])
    ref = mm_mxfp8_mxfp4_reference(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], None, torch.float64)
    assert out.shape == (300, 200) and out.dtype == torch.bfloat16
    assert float((out.double() - ref).norm() / ref.norm()) < 2**-7


def test_public_api_emulated_backend() -> None:
    ops = make_operands("mxfp4", 300, 200, 640, seed=3)
    out = mm_fp4(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], block_size=32, use_nvfp4=False,
                 backend="cutlass_sm12x")
    assert out.shape == (300, 200) and out.dtype == torch.bfloat16 and not out.isnan().any()


def test_cuda_graph_capture_and_replay() -> None:
    ops = make_operands("mxfp4", 128, 256, 1024, seed=4)
    args = (ops["a"], ops["b"], ops["a_descale"], ops["b_descale"])
    eager = mm_fp4(*args, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")  # builds + warms up
    out = torch.empty_like(eager)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mm_fp4(*args, out=out, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", W4A4_FORMATS)
def test_batch_invariant_row_bits_do_not_depend_on_the_batch(fmt: str) -> None:
    """batch_invariant=True: the same input row gives the same output bits alone, inside 7 rows and inside 300
    rows, at different positions (one tactic for every M, no split-K)."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(300, 1024, generator=gen) * 3).cuda()
    w = torch.randn(256, 1024, generator=gen).cuda()
    use_nvfp4 = fmt == "nvfp4"
    if use_nvfp4:
        gs = (448 * 6 / x.abs().amax()).float()
        b, b_sf = nvfp4_quantize(w, gs)

        def quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return nvfp4_quantize(rows, gs)
    else:
        b, b_sf = mxfp4_quantize(w)
        quantize = mxfp4_quantize
    kwargs = dict(block_size=16 if use_nvfp4 else 32, use_nvfp4=use_nvfp4, backend="cutlass_sm12x",
                  batch_invariant=True)
    row = 123
    a, a_sf = quantize(x[row:row + 1])
    alone = mm_fp4(a, b.T, a_sf, b_sf.T, **kwargs)[0]
    for size, pos in ((7, 0), (7, 6), (300, row), (300, 299)):
        order = [i for i in range(300) if i != row][: size - 1]
        order.insert(pos, row)
        a, a_sf = quantize(x[order].contiguous())
        got = mm_fp4(a, b.T, a_sf, b_sf.T, **kwargs)[pos]
        assert torch.equal(got.view(torch.int16), alone.view(torch.int16)), (size, pos)
