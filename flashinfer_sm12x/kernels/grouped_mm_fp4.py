# SPDX-License-Identifier: Apache-2.0
"""The grouped block-scaled GEMM family `grouped_mm_fp4`, the MoE GEMM (include/flashinfer_sm12x/gemm/
grouped_mm_fp4.cuh, jit/grouped_mm_fp4.cu.jinja): mm_fp4's tile configs with a mainloop that picks B per M tile.

    out[r, :] = (A[r, :] * SFA) @ (B[e(r)] * SFB[e(r)])^T,   e(r) = expert_of_tile[r // tile_m]

With the routing plan's per-expert rows (padded_start, counts), A[r, :] reads as zeros for every r at or past
padded_start[e(r)] + counts[e(r)]: those rows of A are not read (include/flashinfer_sm12x/common/a_row_bounds.cuh).

Formats: W4A4 "mxfp4" (A packed e2m1) and W4A8 "mxfp8_mxfp4" (A e4m3); B is MXFP4 weights either way, all scales
E8M0 per 32 in the 128x4 layout. W4A8 runs CUTLASS's own SM120 collective (FP4 unpacked to 8 bit in smem by TMA)
with the per-tile batch choice around it.
"""

from __future__ import annotations

from ..jit.arch import Target
from .family import GemmFamily, Tactic, assumed_sm_count

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
# Not a candidate: a 64x64 W4A4 decode tile (twice GEMM2's CTAs at T = 1) does not compile. The 64-row mainloop
# loads SFB as CUTLASS lays it out for TileN >= 128 (gemm/mainloops/m64_pingpong.cuh, gemm/config.cuh static
# asserts; with TileN 64 the SF shared-memory shape TileN / 128 is 0). docs/compile_proofs.md records the proof.
_M64, _PP128, _CO128 = CANDIDATES
_W8PP64, _W8CO128, _W8PP32 = W4A8_CANDIDATES
# Compile-proven per target (docs/compile_proofs.md). As for the dense GEMM, ptxas spills inside Pingpong 128x128's
# mainloop for sm_121a.
PROVEN: dict[str, dict[str, tuple[Tactic, ...]]] = {
    "sm_120a": {"mxfp4": (_M64, _PP128, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
    "sm_121a": {"mxfp4": (_M64, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
}


# The widest N tile of the menus: a problem whose grid at this width fits in one wave is "decode-sized" on that GPU
# (see `preference`).
WIDEST_TILE_N = 128


def padded_rows_bound(m: int, groups: int, tile_m: int) -> int:
    """The rows a grouped GEMM computes for m routed rows over `groups` experts with every expert's rows padded to
    `tile_m`: the MoE row plan's host bound, round_up(m + min(groups, m) * (tile_m - 1), tile_m) (exact at decode,
    where every active expert holds one partial tile)."""
    rows = m + min(groups, m) * (tile_m - 1)
    return -(-rows // tile_m) * tile_m


def grid_ctas(t: Tactic, m: int, n: int, groups: int) -> int:
    """The CTAs (output tiles) of one grouped GEMM: M tiles of the padded row bound times ceil(n / tile_n); 0 when
    n is not known (n <= 0)."""
    if n <= 0 or m <= 0:
        return 0
    return padded_rows_bound(m, groups, t.tile_m) // t.tile_m * -(-n // t.tile_n)


def sm_fill(ctas: int, sms: int) -> tuple[int, float]:
    """(waves, fill) of `ctas` one-per-SM CTAs on `sms` SMs: ceil(ctas / sms) waves, and the fraction of the SM
    slots of those waves that hold a CTA (1.0 = every SM busy in every wave; 0 CTAs: (0, 0.0))."""
    if ctas <= 0 or sms <= 0:
        return 0, 0.0
    waves = -(-ctas // sms)
    return waves, ctas / (waves * sms)


def preference(t: Tactic, fmt: str, m: int, n: int, k: int, groups: int, sms: int) -> tuple:
    """The grouped heuristic's sort key (`FAMILY.heuristic`, smaller first) of tactic `t` for m routed rows over
    `groups` experts, an n-column output, on `sms` SMs. A pure function: the rule is tested without a GPU.

    In order:

    1. **The tile height.** W4A4: 64-row tiles while experts get few rows each (m <= 64 x groups: decode and small
       batches, less padding per expert), 128 rows beyond; W4A8 has 128-row tiles only. Both MoE GEMMs share it
       (GEMM2 reads GEMM1's padded rows), and at decode it does not change the CTA count (one M tile per active
       expert either way).
    2. **Cover the SMs when the problem is decode-sized on this GPU**: its grid at the widest tile
       (`WIDEST_TILE_N` columns, this tile height) fits in one wave, so a wide tile leaves SMs idle for the whole
       kernel. Then the tactic with the shortest critical path comes first: waves x tile_n, the weight columns (and,
       at a fixed tile height, the MMAs) the busiest SM works through; ties go to the least idle fraction of the SM
       slots of those waves (`sm_fill`). E.g. GPT-OSS GEMM2 (N = 2944) at T = 1, 64x128 -> 4 x 23 = 92 CTAs: on 188
       SMs a 64-column tile (184 CTAs, one wave) halves the critical path; on 170 SMs its 184 CTAs take two waves
       and tie with 64x128 in critical path and idle share (then rule 4's fewer waves keep the wider tile).
    3. **The schedule rules.** W4A4: Pingpong. W4A8: the 128x64 Pingpong tile (more stages than 128x128),
       Cooperative 128x128 once every expert has several M tiles (m >= 512 x groups).
    4. **Fewest waves, then the least idle fraction** (`sm_fill`) for problems beyond one wave: the wave
       quantization is then a tail effect, after the tile's own efficiency (stages, padding).
    5. **Larger tiles** (tile_m x tile_n): fewer redundant A loads.

    The CTA count is `grid_ctas` (the padded row bound's M tiles times ceil(n / tile_n)); n <= 0 (not known) leaves
    rules 2 and 4 out. K does not enter it (every candidate has tile_k 128). Reasoned, and checked against
    benchmarks/decode_model.py (a model), not measured on SM12x: FlashInfer's autotuner decides for real where it
    is asked."""
    del k
    ctas = grid_ctas(t, m, n, groups)
    waves, fill = sm_fill(ctas, sms)
    idle = round(1.0 - fill, 6)
    widest = grid_ctas(Tactic(t.schedule, t.tile_m, WIDEST_TILE_N, t.tile_k), m, n, groups)
    decode_sized = 0 < widest <= sms
    critical_path = (waves * t.tile_n, idle) if decode_sized else (0, 0.0)
    if fmt == "mxfp8_mxfp4":
        want = _W8CO128 if m >= 512 * groups else _W8PP64
        height, schedule = False, (t != want,)
    else:
        height, schedule = t.tile_m != (64 if m <= 64 * groups else 128), (t.schedule != "pingpong",)
    return (height, *critical_path, *schedule, waves, idle, -t.tile_m * t.tile_n)


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


def moe_tactics(rows: int, num_experts: int, fmt: str, target: Target | None = None, sm_count: int | None = None,
                *, hidden_padded: int = 0, inter_padded: int = 0) -> tuple[Tactic, Tactic]:
    """The (GEMM1, GEMM2) tactics of one MoE forward with `rows` = T * k routed rows over `num_experts` experts.

    GEMM1 computes [rows, Hp] x w13^T -> 2 * Ip columns, GEMM2 [rows, Ip] x w2^T -> Hp columns: each takes the
    heuristic's first tactic for its own n and k on `sm_count` SMs (default `assumed_sm_count(target)`). They
    share tile_m (GEMM2's A rows are GEMM1's output rows, padded per expert to the tile height), so GEMM1's choice
    fixes it and GEMM2 takes its best tactic of that height. GEMM1 prefers tactics whose tile serves the fused
    activation epilogue ("swiglu_quantize": tile_n % 64 == 0), which fused_moe runs wherever the weights allow.

    Parameters
    ----------
    rows, num_experts : int
        T * k and E.
    fmt : str
        The grouped GEMM format, "mxfp4" or "mxfp8_mxfp4".
    target : Target, optional
        Whose proven menu (None: the emulation menu).
    sm_count : int, optional
        The device's SM count (`jit.arch.device_facts(...).sm_count`).
    hidden_padded, inter_padded : int
        Hp and Ip. 0 (not known) leaves the wave rules out: both GEMMs then get the m-based rules' tactic.

    Returns
    -------
    tuple of Tactic
        (GEMM1's tactic, GEMM2's tactic), equal tile_m.
    """
    sms = sm_count if sm_count is not None else assumed_sm_count(target)
    order1 = heuristic(rows, 2 * inter_padded, hidden_padded, fmt, target, sms, groups=num_experts)
    fusable = [t for t in order1 if FAMILY.serves("swiglu_quantize", fmt, t)]
    gemm1 = (fusable or list(order1))[0]
    order2 = heuristic(rows, hidden_padded, inter_padded, fmt, target, sms, groups=num_experts)
    gemm2 = next(t for t in order2 if t.tile_m == gemm1.tile_m)
    return gemm1, gemm2
