"""Grouped block-scaled GEMM over expert-contiguous rows, the MoE GEMM (include/flashinfer_sm12x/grouped_mm_fp4.cuh,
jit/grouped_mm_fp4.cu.jinja; the tile configs are mm_fp4's, with a mainloop that picks B per M tile).

    out[r, :] = (A[r, :] * SFA) @ (B[e(r)] * SFB[e(r)])^T,   e(r) = expert_of_tile[r // tile_m]

Formats: W4A4 "mxfp4" (A packed e2m1, uint8 [m, k/2]) and W4A8 "mxfp8_mxfp4" (A e4m3, float8_e4m3fn [m, k]);
B is MXFP4 weights either way, all scales E8M0 per 32 in the 128x4 layout. The format follows A's dtype.

Rows are sorted by expert and every expert's segment is padded to a multiple of `tactic.tile_m` (the caller
zeroes padding rows), so each M tile belongs to one expert. `expert_of_tile` lives on the device: the routing
writes it, the host never reads it (no sync; CUDA-graph capturable). Tiles past the last used one must still
name a valid expert; they compute rows nobody reads (the MoE bounds how many there are).

W4A8 runs CUTLASS's own SM120 collective (FP4 unpacked to 8 bit in smem by TMA) with the per-tile batch choice
around it; SM90 cannot emulate that load, so W4A8 has compile proofs and native tests, no H100 emulation.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArchError
from ..jit.arch import Target, target_for_device
from ..jit.module import ModuleSpec, Source, load_module
from ..jit.render import render
from .mm_fp4 import Tactic

FORMATS = ("mxfp4", "mxfp8_mxfp4")
MENU = {
    "format": FORMATS,
    "out_dtype": ("bfloat16", "float16"),
    "tile_m": (64, 128),
    "tile_n": (32, 64, 128),
    "tile_k": (128,),
    "schedule": ("pingpong", "cooperative"),
    "emulated": (False, True),
}
_OUT_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_A_DTYPE = {"mxfp4": torch.uint8, "mxfp8_mxfp4": torch.float8_e4m3fn}
_A_ELEMS_PER_BYTE = {"mxfp4": 2, "mxfp8_mxfp4": 1}
# K alignment: a 16-byte TMA row of packed e2m1 (32); W4A8's unpacked-e2m1 TMA box is 128 wide in K.
_K_ALIGN = {"mxfp4": 32, "mxfp8_mxfp4": 128}

CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 64, 128, 128),  # decode: a few rows per expert
    Tactic("pingpong", 128, 128, 128),
    Tactic("cooperative", 128, 128, 128),
)
# W4A8 keeps e2m1 unpacked in smem, so a 128x128 stage is large (2 stages for 128x128, see mm_fp4.cuh): the
# narrower N tiles keep more stages in flight; no 64-row tile (the 64-row mainloop is packed-e2m1 only).
W4A8_CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 128, 64, 128),
    Tactic("cooperative", 128, 128, 128),
    Tactic("pingpong", 128, 32, 128),
)
_CANDIDATES_OF = {"mxfp4": CANDIDATES, "mxfp8_mxfp4": W4A8_CANDIDATES}
# Compile-proven per target (scripts/compile_sweep.py --op grouped_mm_fp4 --candidates, nvcc 13.0; tables in the
# notes). As for the dense GEMM, ptxas spills inside Pingpong 128x128's mainloop for sm_121a.
_M64, _PP128, _CO128 = CANDIDATES
_W8PP64, _W8CO128, _W8PP32 = W4A8_CANDIDATES
PROVEN: dict[str, dict[str, tuple[Tactic, ...]]] = {
    "sm_120a": {"mxfp4": (_M64, _PP128, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
    "sm_121a": {"mxfp4": (_M64, _CO128), "mxfp8_mxfp4": (_W8PP64, _W8CO128, _W8PP32)},
}
EMULATION_MENU_OF = "sm_120a"


def candidates(fmt: str = "mxfp4") -> tuple[Tactic, ...]:
    if fmt not in _CANDIDATES_OF:
        raise ValueError(f"grouped_mm_fp4: format must be one of {FORMATS}, got {fmt!r}")
    return _CANDIDATES_OF[fmt]


def shipped(target: Target | None = None, fmt: str = "mxfp4") -> tuple[Tactic, ...]:
    name = EMULATION_MENU_OF if target is None or target.emulated else target.name
    if name in PROVEN:
        return PROVEN[name][fmt]
    return tuple(t for t in candidates(fmt) if all(t in menu[fmt] for menu in PROVEN.values()))


def heuristic(rows: int, num_experts: int, target: Target | None = None, fmt: str = "mxfp4") -> Tactic:
    """W4A4: 64-row tiles while experts get few rows each (decode, small batches: less padding per expert), 128-row
    Pingpong beyond. W4A8: the 128x64 Pingpong tile (more stages than 128x128), Cooperative 128x128 once every
    expert has several M tiles. Reasoned, not measured on SM12x."""
    menu = shipped(target, fmt)
    if fmt == "mxfp8_mxfp4":
        want = _W8CO128 if rows >= 512 * num_experts else _W8PP64
        return want if want in menu else menu[0]
    want_m = 64 if rows <= 64 * num_experts else 128
    for t in menu:
        if t.tile_m == want_m:
            return t
    return menu[0]


def grouped_mm_fp4_spec(target: Target, tactic: Tactic, out_dtype: torch.dtype, fmt: str = "mxfp4") -> ModuleSpec:
    if fmt == "mxfp8_mxfp4" and target.emulated:
        raise ArchError("grouped_mm_fp4: W4A8 has no emulated (SM90) build: its FP4 operand is unpacked by a TMA "
                        "type and an ldmatrix that only SM100/SM12x have")
    params = {"format": fmt, "out_dtype": _OUT_NAMES.get(out_dtype, str(out_dtype)), "tile_m": tactic.tile_m,
              "tile_n": tactic.tile_n, "tile_k": tactic.tile_k, "schedule": tactic.schedule,
              "emulated": target.emulated}
    text = render("grouped_mm_fp4.cu.jinja", params, MENU)
    return ModuleSpec(op="grouped_mm_fp4", group=f"{fmt}_{params['out_dtype']}_{tactic.name}", target=target,
                      sources=(Source("grouped_mm_fp4.cu", text),), uses_cutlass=True)


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def _check(name: str, t: Any, dtype: torch.dtype | tuple, shape: tuple | None = None, numel: int | None = None
           ) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"grouped_mm_fp4: {name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if t.dtype not in dtypes:
        raise TypeError(f"grouped_mm_fp4: {name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"grouped_mm_fp4: {name} must have shape {shape}, got {tuple(t.shape)}")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"grouped_mm_fp4: {name} must have {numel} elements (128x4 layout), got {t.numel()}")
    if not t.is_contiguous():
        raise ValueError(f"grouped_mm_fp4: {name} must be contiguous")
    return t


_SF_DTYPES = (torch.uint8, torch.float8_e8m0fnu)
_MODULES: dict[tuple, Any] = {}


def grouped_mm_fp4(a: torch.Tensor, a_descale: torch.Tensor, b: torch.Tensor, b_descale: torch.Tensor,
                   expert_of_tile: torch.Tensor, tactic: Tactic, out: torch.Tensor | None = None,
                   out_dtype: torch.dtype = torch.bfloat16, enable_pdl: bool = True) -> torch.Tensor:
    """a [m_total, k/2] uint8 (MXFP4) or [m_total, k] float8_e4m3fn (MXFP8: W4A8), rows expert-contiguous, segments
    padded to tactic.tile_m; a_descale 128x4 over m_total rows; b [E, n, k/2] uint8 (K-major per expert),
    b_descale [E, round_up(n,128), round_up(k/32,4)] (128x4 per expert); expert_of_tile int32 [m_total / tile_m];
    out [m_total, n] bf16/fp16."""
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"grouped_mm_fp4: a must be a torch.Tensor, got {type(a).__name__}")
    fmt = {v: k for k, v in _A_DTYPE.items()}.get(a.dtype)
    if fmt is None:
        raise TypeError(f"grouped_mm_fp4: a must be uint8 (packed MXFP4) or float8_e4m3fn (MXFP8), got {a.dtype}")
    menu = candidates(fmt)
    if not isinstance(tactic, Tactic) or tactic not in menu:
        raise ValueError(f"grouped_mm_fp4: tactic for {fmt} must be one of {[t.name for t in menu]}, got {tactic!r}")
    _check("a", a, a.dtype)
    _check("b", b, torch.uint8)
    if a.ndim != 2 or b.ndim != 3:
        raise ValueError(f"grouped_mm_fp4: a must be 2-D and b 3-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    m, k, (experts, n) = a.shape[0], a.shape[1] * _A_ELEMS_PER_BYTE[fmt], b.shape[:2]
    if b.shape[2] * 2 != k:
        raise ValueError(f"grouped_mm_fp4: K mismatch: a gives {k}, b gives {b.shape[2] * 2}")
    if k % _K_ALIGN[fmt] or n % 8 or m % tactic.tile_m or m == 0:
        raise ValueError(f"grouped_mm_fp4: {fmt} needs K % {_K_ALIGN[fmt]} == 0, N % 8 == 0 and m_total a positive "
                         f"multiple of {tactic.tile_m}; got m_total={m}, n={n}, k={k}")
    kb = _round_up(k // 32, 4)
    _check("a_descale", a_descale, _SF_DTYPES, numel=_round_up(m, 128) * kb)
    _check("b_descale", b_descale, _SF_DTYPES, numel=experts * _round_up(n, 128) * kb)
    _check("expert_of_tile", expert_of_tile, torch.int32, shape=(m // tactic.tile_m,))
    if out_dtype not in _OUT_NAMES:
        raise ValueError(f"grouped_mm_fp4: out_dtype must be bfloat16 or float16, got {out_dtype}")
    if out is not None:
        _check("out", out, out_dtype, shape=(m, n))
    tensors = [a, a_descale, b, b_descale, expert_of_tile] + ([out] if out is not None else [])
    devices = {t.device for t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise ValueError(f"grouped_mm_fp4: all tensors must be on one CUDA device, got {sorted(map(str, devices))}")
    target = target_for_device(torch.cuda.get_device_capability(a.device))
    if fmt == "mxfp8_mxfp4" and target.emulated:
        raise ArchError("grouped_mm_fp4: W4A8 runs only on SM120/SM121 (no emulated SM90 build)")
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)

    key = (target.name, fmt, tactic, out_dtype)
    module = _MODULES.get(key)
    if module is None:
        module = _MODULES[key] = load_module(grouped_mm_fp4_spec(target, tactic, out_dtype, fmt))
    workspace = torch.empty(max(int(module.workspace_bytes(m, n, k, experts)), 1), dtype=torch.uint8,
                            device=a.device)
    a_bytes = a.view(torch.uint8) if fmt == "mxfp8_mxfp4" else a
    module.run(a_bytes, b, a_descale.view(torch.uint8), b_descale.view(torch.uint8), expert_of_tile, out, workspace,
               bool(enable_pdl and not target.emulated))
    return out
