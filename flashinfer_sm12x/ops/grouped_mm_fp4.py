"""Grouped MXFP4 GEMM over expert-contiguous rows, the MoE GEMM (include/flashinfer_sm12x/grouped_mm_fp4.cuh,
jit/grouped_mm_fp4.cu.jinja; the tile configs are mm_fp4's, with a byte-TMA mainloop that picks B per M tile).

    out[r, :] = (A[r, :] * SFA) @ (B[e(r)] * SFB[e(r)])^T,   e(r) = expert_of_tile[r // tile_m]

Rows are sorted by expert and every expert's segment is padded to a multiple of `tactic.tile_m` (the caller
zeroes padding rows), so each M tile belongs to one expert. `expert_of_tile` lives on the device: the routing
writes it, the host never reads it (no sync; CUDA-graph capturable). Tiles past the last used one must still
name a valid expert; they compute rows nobody reads (the MoE bounds how many there are).
"""

from __future__ import annotations

from typing import Any

import torch

from ..jit.arch import Target, target_for_device
from ..jit.module import ModuleSpec, Source, load_module
from ..jit.render import render
from .mm_fp4 import Tactic

MENU = {
    "format": ("mxfp4",),
    "out_dtype": ("bfloat16", "float16"),
    "tile_m": (64, 128),
    "tile_n": (128,),
    "tile_k": (128,),
    "schedule": ("pingpong", "cooperative"),
    "emulated": (False, True),
}
_OUT_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}

CANDIDATES: tuple[Tactic, ...] = (
    Tactic("pingpong", 64, 128, 128),  # decode: a few rows per expert
    Tactic("pingpong", 128, 128, 128),
    Tactic("cooperative", 128, 128, 128),
)
# Compile-proven per target (scripts/compile_sweep.py --op grouped_mm_fp4, 2026-11-22, nvcc 13.0; table in the
# notes). As for the dense GEMM, ptxas spills inside Pingpong 128x128's mainloop for sm_121a.
_M64, _PP128, _CO128 = CANDIDATES
PROVEN: dict[str, tuple[Tactic, ...]] = {"sm_120a": (_M64, _PP128, _CO128), "sm_121a": (_M64, _CO128)}
EMULATION_MENU_OF = "sm_120a"


def shipped(target: Target | None = None) -> tuple[Tactic, ...]:
    name = EMULATION_MENU_OF if target is None or target.emulated else target.name
    if name in PROVEN:
        return PROVEN[name]
    return tuple(t for t in CANDIDATES if all(t in menu for menu in PROVEN.values()))


def heuristic(rows: int, num_experts: int, target: Target | None = None) -> Tactic:
    """64-row tiles while experts get few rows each (decode, small batches: less padding per expert), 128-row
    Pingpong beyond. Reasoned, not measured on SM12x."""
    menu = shipped(target)
    want = 64 if rows <= 64 * num_experts else 128
    for t in menu:
        if t.tile_m == want:
            return t
    return menu[0]


def grouped_mm_fp4_spec(target: Target, tactic: Tactic, out_dtype: torch.dtype) -> ModuleSpec:
    params = {"format": "mxfp4", "out_dtype": _OUT_NAMES.get(out_dtype, str(out_dtype)), "tile_m": tactic.tile_m,
              "tile_n": tactic.tile_n, "tile_k": tactic.tile_k, "schedule": tactic.schedule,
              "emulated": target.emulated}
    text = render("grouped_mm_fp4.cu.jinja", params, MENU)
    return ModuleSpec(op="grouped_mm_fp4", group=f"mxfp4_{params['out_dtype']}_{tactic.name}", target=target,
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
    """a [m_total, k/2] uint8 (MXFP4, rows expert-contiguous, segments padded to tactic.tile_m), a_descale 128x4
    over m_total rows; b [E, n, k/2] uint8 (K-major per expert), b_descale [E, round_up(n,128), round_up(k/32,4)]
    (128x4 per expert); expert_of_tile int32 [m_total / tile_m]; out [m_total, n] bf16/fp16."""
    if not isinstance(tactic, Tactic) or tactic not in CANDIDATES:
        raise ValueError(f"grouped_mm_fp4: tactic must be one of {[t.name for t in CANDIDATES]}, got {tactic!r}")
    _check("a", a, torch.uint8)
    _check("b", b, torch.uint8)
    if a.ndim != 2 or b.ndim != 3:
        raise ValueError(f"grouped_mm_fp4: a must be 2-D and b 3-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    m, k, (experts, n) = a.shape[0], a.shape[1] * 2, b.shape[:2]
    if b.shape[2] * 2 != k:
        raise ValueError(f"grouped_mm_fp4: K mismatch: a gives {k}, b gives {b.shape[2] * 2}")
    if k % 32 or n % 8 or m % tactic.tile_m or m == 0:
        raise ValueError(f"grouped_mm_fp4: need K % 32 == 0 (TMA rows), N % 8 == 0 and m_total a positive multiple "
                         f"of {tactic.tile_m}; got m_total={m}, n={n}, k={k}")
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
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)

    target = target_for_device(torch.cuda.get_device_capability(a.device))
    key = (target.name, tactic, out_dtype)
    module = _MODULES.get(key)
    if module is None:
        module = _MODULES[key] = load_module(grouped_mm_fp4_spec(target, tactic, out_dtype))
    workspace = torch.empty(max(int(module.workspace_bytes(m, n, k, experts)), 1), dtype=torch.uint8,
                            device=a.device)
    module.run(a, b, a_descale.view(torch.uint8), b_descale.view(torch.uint8), expert_of_tile, out, workspace,
               bool(enable_pdl and not target.emulated))
    return out
