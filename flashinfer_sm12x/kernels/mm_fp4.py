# SPDX-License-Identifier: Apache-2.0
"""The dense block-scaled GEMM family `mm_fp4` (include/flashinfer_sm12x/gemm/mm_fp4.cuh, jit/mm_fp4.cu.jinja):
formats, candidate tactics, the compile-proven menu per target, and the tile heuristic.

D = alpha * (A * SFA)(B * SFB)^T with A [m, k] and B [n, k] both K-major, D [m, n] bf16/fp16, scales in the
128x4 layout. Formats: MXFP4 x MXFP4 (W4A4), NVFP4 x NVFP4, MXFP8 x MXFP4 (W4A8).
"""

from __future__ import annotations

from .family import GemmFamily, Tactic, assumed_sm_count

FORMATS = ("mxfp4", "nvfp4", "mxfp8_mxfp4")
# Every format has an emulated SM90 build (docs/emulation.md); W4A8's swaps its FP4 operand's smem path too.
EMULATED_FORMATS = ("mxfp4", "nvfp4", "mxfp8_mxfp4")
BLOCK_SIZE = {"mxfp4": 32, "nvfp4": 16, "mxfp8_mxfp4": 32}
MENU = {
    "format": FORMATS,
    "out_dtype": ("bfloat16", "float16"),
    "tile_m": (64, 128, 256),
    "tile_n": (32, 64, 128, 256),
    "tile_k": (128, 256),
    "schedule": ("pingpong", "cooperative", "streamk"),
    "emulated": (False, True),
    "swap_ab": (False, True),
}

# Every config the compile sweep tries (scripts/compile_sweep.py --candidates).
CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 128, 128, 128),
    Tactic("cooperative", 128, 128, 128),
    Tactic("pingpong", 128, 64, 128),
    Tactic("pingpong", 128, 32, 128),
    Tactic("cooperative", 256, 128, 128),
    Tactic("pingpong", 128, 128, 256),
    Tactic("streamk", 128, 128, 128),
    Tactic("pingpong", 128, 32, 128, swap_ab=True),
    Tactic("pingpong", 128, 64, 128, swap_ab=True),
    Tactic("pingpong", 64, 128, 128),  # our 64-row mainloop (gemm/mainloops/m64_pingpong.cuh)
)
_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64 = CANDIDATES


def applicable(fmt: str, tactic: Tactic) -> bool:
    """W4A8 has different A and B formats (it cannot swap them) and keeps FP4 unpacked in smem (the 64-row
    mainloop serves packed e2m1 x e2m1 only)."""
    return not (fmt == "mxfp8_mxfp4" and (tactic.swap_ab or tactic.tile_m == 64))


# The shipped menu per (target, format): configs whose compile proof passed for that target (native MMA in SASS,
# no spill instruction in the mainloop, smem <= 101,376 B). Sweep of 2026-11-22 (nvcc 13.0, CUTLASS 4.5.0):
# docs/compile_proofs.md has the table and how to reproduce it. Cooperative 256x128 spills only in its prologue and
# epilogue; Pingpong 128x128 spills inside its mainloop for sm_121a (not for sm_120a).
PROVEN: dict[str, dict[str, tuple[Tactic, ...]]] = {
    "sm_120a": {
        "mxfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SW32, _SW64, _M64),
        "nvfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _SW32, _SW64, _M64),
        "mxfp8_mxfp4": (_PP128, _CO128, _PP64, _PP32),
    },
    "sm_121a": {
        "mxfp4": (_CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64),
        "nvfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64),
        "mxfp8_mxfp4": (_CO128, _PP64, _PP32, _SK128),
    },
}

# batch_invariant=True: one tactic for every M. A row's output then comes from the same per-thread k-order of the
# same MMA instructions whatever the number of rows and the row's position: no split-K / stream-K (a reduction
# order that depends on the grid) and no swapped A/B (the MMA's internal summation order is undocumented, so a
# swapped product is not proven to give the same bits). Cooperative 128x128x128 is proven for every format on
# every target.
BATCH_INVARIANT_TACTIC = _CO128


def preference(t: Tactic, fmt: str, m: int, n: int, k: int, groups: int, sms: int) -> tuple:
    """The dense heuristic's sort key (`FAMILY.heuristic`; reasoned, not measured on SM12x: FlashInfer's autotuner,
    through backend="auto" inside `flashinfer.autotune()`, decides for real).

    Decode / small M (m <= 64) reads the whole weight once whatever the tile, so the tile should waste little
    MMA work and still give enough CTAs. On a wide layer (ceil(N/128) CTAs fill at least 3/4 of the SMs by
    themselves): m <= 32 swapped A/B with an N' tile that covers m; 32 < m <= 64 the 64-row tile (same CTA count and
    waste as swapping, with a row-major store). On a narrower layer: 128-row Pingpong with the narrowest N tile (more
    CTAs in flight), then the 64-row tile. 64 < m <= 128: the 64-row tile while its doubled CTA count still fits
    one wave, else Pingpong 128x128. Larger M: Pingpong 128x128 up to 256 rows; then Cooperative, with 256-row
    tiles once the grid has several (4) waves; stream-K last. Waves are counted in `sms` SMs. The tile choice does
    not depend on K today; `groups` is 1 (dense).
    """
    del fmt, k, groups
    tiles = -(-m // 128) * -(-n // 128)
    wide = 4 * -(-n // 128) >= 3 * sms
    if m <= 64:
        if wide and m <= 32:
            rank = 0 if t.swap_ab and t.tile_n >= m else 1 if t.tile_m == 64 else 2 if t.swap_ab else 3
        elif wide:
            rank = 0 if t.tile_m == 64 else 1 if t.swap_ab and t.tile_n >= m else 2
        else:
            rank = 0 if t.tile_m == 128 and not t.swap_ab else 1 if t.tile_m == 64 else 2
        return (rank, t.schedule != "pingpong", t.tile_n, t.tile_k)
    if m <= 128 and 2 * -(-n // 128) <= sms:
        return (t.tile_m != 64, t.swap_ab, t.schedule != "pingpong", abs(t.tile_n - 128), t.tile_k)
    if m <= 256:
        return (t.swap_ab, t.tile_m != 128, t.schedule != "pingpong", abs(t.tile_n - 128), t.tile_k)
    big = tiles >= 4 * sms and m >= 1024
    return (t.swap_ab, t.tile_m == 64, t.schedule == "streamk", t.schedule != "cooperative",
            (t.tile_m != 256) if big else t.tile_m, abs(t.tile_n - 128), t.tile_k)


FAMILY = GemmFamily(
    name="mm_fp4", formats=FORMATS, emulated_formats=EMULATED_FORMATS, menu=MENU,
    candidates_of={fmt: tuple(t for t in CANDIDATES if applicable(fmt, t)) for fmt in FORMATS},
    proven=PROVEN, prebuild_out_dtypes=("bfloat16", "float16"), preference=preference,
)

# The family's heuristic under its own name (one signature for both GEMM families: m, n, k, fmt, target, sm_count).
heuristic = FAMILY.heuristic
__all__ = ["BATCH_INVARIANT_TACTIC", "BLOCK_SIZE", "FAMILY", "FORMATS", "assumed_sm_count", "heuristic"]
