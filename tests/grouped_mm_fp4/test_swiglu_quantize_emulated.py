# SPDX-License-Identifier: Apache-2.0
"""Rung 3 for the MoE epilogues of grouped_mm_fp4, sm_90a builds with the emulated MMA atom on an H100/H200: GEMM1's
fused activation ("swiglu_quantize") against GEMM1 (bf16 out) followed by the standalone activation kernel - the
same bits, data and scales - for every tactic that serves it, W4A4 and W4A8, with an N residue (2I not a multiple of
the tile), padding scale columns, every bias dtype, both activations, per-expert parameters, g1 and rows left
unrouted; GEMM2's routed-rows store ("store_routed") against the plain store for every shipped tactic."""

from __future__ import annotations

import os

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY
from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_store_routed_case, run_swiglu_quantize_case
from flashinfer_sm12x.testing.workloads import prebuild_for_tests

_SM90 = parse_target("sm_90a")
FUSED = {fmt: tuple(t for t in FAMILY.shipped(fmt, _SM90) if FAMILY.serves("swiglu_quantize", fmt, t))
         for fmt in ("mxfp4", "mxfp8_mxfp4")}
_ACT = {"mxfp4": "mxfp4", "mxfp8_mxfp4": "mxfp8"}
_K = {"mxfp4": 2880, "mxfp8_mxfp4": 2944}  # W4A8's unpacked-e2m1 TMA box needs K % 128

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]


@pytest.fixture(scope="module", autouse=True)
def _prebuilt() -> None:
    os.environ.setdefault("FLASHINFER_SM12X_EMULATE", "1")
    specs = [FAMILY.spec(_SM90, fmt, t, torch.bfloat16, epilogue) for fmt in FUSED for t in FAMILY.shipped(fmt, _SM90)
             for epilogue in ("store", "swiglu_quantize", "store_routed") if FAMILY.serves(epilogue, fmt, t)]
    prebuild_for_tests(specs, "MoE epilogue emulation tests")


def test_every_shipped_wide_tactic_serves_the_fused_epilogue() -> None:
    assert len(FUSED["mxfp4"]) == len(FAMILY.shipped("mxfp4", _SM90))
    assert all(t.tile_n % 64 == 0 for ts in FUSED.values() for t in ts) and FUSED["mxfp8_mxfp4"]


@pytest.mark.parametrize(("fmt", "tactic"), [(f, t) for f, ts in FUSED.items() for t in ts],
                         ids=lambda v: v if isinstance(v, str) else v.name)
@pytest.mark.parametrize(("num_e", "tiles", "inter", "k"), [(4, 3, 160, 256), (3, 2, 2880, None)],
                         ids=["residue", "gpt-oss"])
def test_fused_epilogue_is_bit_identical_to_gemm_then_activation(fmt: str, tactic, num_e: int, tiles: int,
                                                                  inter: int, k: int | None) -> None:
    run_swiglu_quantize_case(tactic, num_e, tiles, inter, k or _K[fmt], _ACT[fmt])


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_mxfp4"])
@pytest.mark.parametrize("variant", ["fp32-bias", "fp16-bias", "no-bias", "swiglu", "per-expert", "g1", "no-limit",
                                     "routed-rows"])
def test_fused_epilogue_variants(fmt: str, variant: str) -> None:
    kwargs = {"fp32-bias": {"bias_dtype": torch.float32}, "fp16-bias": {"bias_dtype": torch.float16},
              "no-bias": {"bias_dtype": None}, "swiglu": {"activation": "swiglu"}, "per-expert": {"per_expert": True},
              "g1": {"g1": True}, "no-limit": {"limit": None}, "routed-rows": {"partial": True}}[variant]
    run_swiglu_quantize_case(FUSED[fmt][0], 5, 4, 192, 384, _ACT[fmt], **kwargs)


@pytest.mark.parametrize(("fmt", "tactic"), [(f, t) for f in FUSED for t in FAMILY.shipped(f, _SM90)],
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_gemm2_store_routed_writes_the_routed_rows_only(fmt: str, tactic) -> None:
    """GEMM2's epilogue for the MoE: routed rows bit-identical to the plain store, padding rows untouched."""
    run_store_routed_case(tactic, 5, 6, 200 if fmt == "mxfp4" else 264, _K[fmt], _ACT[fmt])


def test_bad_epilogue_inputs_are_rejected_before_launch() -> None:
    """Typed errors of the MoE epilogues' entry points, raised before any launch."""
    from flashinfer_sm12x.formats import mxfp4_quantize
    from flashinfer_sm12x.ops.grouped_mm_fp4 import grouped_mm_fp4_launcher, grouped_mm_fp4_swiglu_quantize
    from flashinfer_sm12x.testing.grouped_mm_fp4_cases import expert_weights

    tactic = FUSED["mxfp4"][0]
    a, a_sf = mxfp4_quantize(torch.randn(tactic.tile_m, 128).cuda())
    b, b_sf = expert_weights(2, 128, 128, torch.Generator().manual_seed(0))
    tiles = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = torch.empty(tactic.tile_m, 128, dtype=torch.bfloat16, device="cuda")
    start, counts = torch.zeros(2, dtype=torch.int32, device="cuda"), torch.ones(2, dtype=torch.int32, device="cuda")
    with pytest.raises(TypeError, match="tuple"):
        grouped_mm_fp4_launcher(a, a_sf, b, b_sf, tiles, tactic, out, routed=[start, counts], fmt="mxfp4")
    with pytest.raises(TypeError, match="int32"):
        grouped_mm_fp4_launcher(a, a_sf, b, b_sf, tiles, tactic, out, routed=(start.long(), counts), fmt="mxfp4")
    with pytest.raises(ValueError, match="shape"):
        grouped_mm_fp4_launcher(a, a_sf, b, b_sf, tiles, tactic, out, routed=(start[:1], counts), fmt="mxfp4")
    with pytest.raises(ValueError, match="device"):
        grouped_mm_fp4_launcher(a, a_sf, b, b_sf, tiles, tactic, out, routed=(start.cpu(), counts), fmt="mxfp4")
    with pytest.raises(ValueError, match="activation"):
        grouped_mm_fp4_swiglu_quantize(a, a_sf, b, b_sf, tiles, tactic, activation="gelu", fmt="mxfp4")
    with pytest.raises(TypeError, match="bias"):
        grouped_mm_fp4_swiglu_quantize(a, a_sf, b, b_sf, tiles, tactic, fmt="mxfp4",
                                       bias=torch.zeros(2, 128, device="cuda", dtype=torch.int32))
    with pytest.raises(ValueError, match="alpha"):
        grouped_mm_fp4_swiglu_quantize(a, a_sf, b, b_sf, tiles, tactic, alpha=torch.ones(3, device="cuda"), fmt="mxfp4")
    narrow = [t for t in FAMILY.candidates("mxfp8_mxfp4") if not FAMILY.serves("swiglu_quantize", "mxfp8_mxfp4", t)]
    a8 = torch.zeros(128, 128, dtype=torch.float8_e4m3fn, device="cuda")
    with pytest.raises(ValueError, match="tile_n"):
        grouped_mm_fp4_swiglu_quantize(a8, torch.zeros(128 * 4, dtype=torch.uint8, device="cuda"), b, b_sf, tiles,
                                       narrow[0])
