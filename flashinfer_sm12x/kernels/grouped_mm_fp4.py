# SPDX-License-Identifier: Apache-2.0
"""The grouped block-scaled GEMM family `grouped_mm_fp4`, the MoE GEMM (include/flashinfer_sm12x/gemm/
grouped_mm_fp4.cuh, jit/grouped_mm_fp4.cu.jinja): mm_fp4's tile configs with a mainloop that picks B per M tile.

    out[r, :] = (A[r, :] * SFA) @ (B[e(r)] * SFB[e(r)])^T,   e(r) = expert_of_tile[r // tile_m]

Formats: W4A4 "mxfp4" (A packed e2m1) and W4A8 "mxfp8_mxfp4" (A e4m3); B is MXFP4 weights either way, all scales
E8M0 per 32 in the 128x4 layout. W4A8 runs CUTLASS's own SM120 collective (FP4 unpacked to 8 bit in smem by TMA)
with the per-tile batch choice around it.
"""

from __future__ import annotations

from .family import GemmFamily, Tactic

FORMATS = ("mxfp4", "mxfp8_mxfp4")
# The MoE's format vocabulary, in one place: the activation format a MoE quantizes its GEMM inputs to ("act", as
# fused_moe and prepare_gpt_oss_weights name it) and the grouped GEMM format that reads it.
GEMM_FORMAT_OF_ACT = {"mxfp4": "mxfp4", "mxfp8": "mxfp8_mxfp4"}
ACTIVATIONS = tuple(GEMM_FORMAT_OF_ACT)


def gemm_format(act: str) -> str:
    """The grouped GEMM format ("mxfp4", "mxfp8_mxfp4") that reads activations quantized to `act` ("mxfp4" W4A4,
    "mxfp8" W4A8); ValueError for anything else."""
    fmt = GEMM_FORMAT_OF_ACT.get(act)
    if fmt is None:
        raise ValueError(f"the activation format must be one of {ACTIVATIONS}, got {act!r}")
    return fmt


def act_format(gemm_fmt: str) -> str:
    """The inverse of `gemm_format`: the activation format a grouped GEMM format reads."""
    for act, fmt in GEMM_FORMAT_OF_ACT.items():
        if fmt == gemm_fmt:
            return act
    raise ValueError(f"the grouped GEMM format must be one of {FORMATS}, got {gemm_fmt!r}")
EMULATED_FORMATS = ("mxfp4", "mxfp8_mxfp4")
MENU = {
    "format": FORMATS,
    "out_dtype": ("bfloat16", "float16"),
    "tile_m": (64, 128),
    "tile_n": (32, 64, 128),
    "tile_k": (128,),
    "schedule": ("pingpong", "cooperative"),
    "emulated": (False, True),
    "epilogue": ("store", "swiglu_quantize", "store_routed"),
}
# Epilogues: "store" writes D (bf16/fp16); "swiglu_quantize" is the MoE's GEMM1 with its activation fused
# (gemm/epilogues/swiglu_quantize.cuh): fc1 bias + SwiGLU over interleaved gate/up columns + quantization to GEMM2's
# activation format, so a tile must hold whole 32-output scale blocks (tile_n % 64 == 0); "store_routed" is the MoE's
# GEMM2 writing the routed rows only (gemm/epilogues/store_routed.cuh).
EPILOGUES = ("store", "swiglu_quantize", "store_routed")
# K alignment: a 16-byte TMA row of packed e2m1 (32); W4A8's unpacked-e2m1 TMA box is 128 wide in K.
K_ALIGN = {"mxfp4": 32, "mxfp8_mxfp4": 128}

CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 64, 128, 128),  # decode: a few rows per expert
    Tactic("pingpong", 128, 128, 128),
    Tactic("cooperative", 128, 128, 128),
)
# W4A8 keeps e2m1 unpacked in smem, so a 128x128 stage is large (2 stages for 128x128): the narrower N tiles keep
# more stages in flight; no 64-row tile (the 64-row mainloop is packed-e2m1 only).
W4A8_CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 128, 64, 128),
    Tactic("cooperative", 128, 128, 128),
    Tactic("pingpong", 128, 32, 128),
)
_M64, _PP128, _CO128 = CANDIDATES
_W8PP64, _W8CO128, _W8PP32 = W4A8_CANDIDATES
# Compile-proven per target (docs/compile_proofs.md). As for the dense GEMM, ptxas spills inside Pingpong 128x128's
# mainloop for sm_121a.
PROVEN: dict[str, dict[str, tuple[Tactic, ...]]] = {
    "sm_120a": {"mxfp4": (_M64, _PP128, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
    "sm_121a": {"mxfp4": (_M64, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
}


def preference(t: Tactic, fmt: str, m: int, n: int, k: int, groups: int, sms: int) -> tuple:
    """The grouped heuristic's sort key (`FAMILY.heuristic`) for m routed rows over `groups` experts.

    W4A4: 64-row tiles while experts get few rows each (decode, small batches: less padding per expert), 128-row
    Pingpong beyond. W4A8: the 128x64 Pingpong tile (more stages than 128x128), Cooperative 128x128 once every
    expert has several M tiles. Reasoned, not measured on SM12x; N, K and the SM count do not enter it yet."""
    del n, k, sms
    if fmt == "mxfp8_mxfp4":
        want = _W8CO128 if m >= 512 * groups else _W8PP64
        return (t != want,)
    want_m = 64 if m <= 64 * groups else 128
    return (t.tile_m != want_m, t.schedule != "pingpong")


FAMILY = GemmFamily(
    name="grouped_mm_fp4", formats=FORMATS, emulated_formats=EMULATED_FORMATS, menu=MENU,
    candidates_of={"mxfp4": CANDIDATES, "mxfp8_mxfp4": W4A8_CANDIDATES}, proven=PROVEN,
    prebuild_out_dtypes=("bfloat16",),  # fused_moe's GEMMs write bf16
    epilogues=EPILOGUES,
    epilogue_serves=lambda epilogue, fmt, tactic: epilogue == "store_routed" or tactic.tile_n % 64 == 0,
    preference=preference,
)


# The family's heuristic under its own name (one signature for both GEMM families).
heuristic = FAMILY.heuristic
