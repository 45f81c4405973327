# SPDX-License-Identifier: Apache-2.0
"""Dense block-scaled GEMM for SM120/SM121 (include/flashinfer_sm12x/mm_fp4.cuh, jit/mm_fp4.cu.jinja).

D = alpha * (A * SFA)(B * SFB)^T with A [m, k] and B [n, k] both K-major, D [m, n] bf16/fp16, scales in the
128x4 layout. Formats: MXFP4 x MXFP4 (W4A4), NVFP4 x NVFP4, MXFP8 x MXFP4 (W4A8).

`mm_fp4` has FlashInfer's exact signature and semantics (`a` [m, k/2] uint8, `b` = w.T, `b_descale` passed
transposed; MXFP4 = `block_size=32, use_nvfp4=False`). Backends: "cutlass_sm12x" (ours), "auto", and
FlashInfer's names, which delegate to `flashinfer.mm_fp4`. One JIT module per (format, out dtype, target,
tactic): a call builds only the tactic it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArchError
from ..jit.arch import Target, target_for_device
from ..jit.module import ModuleSpec, Source, load_module
from ..jit.render import render

OURS = "cutlass_sm12x"
FLASHINFER_BACKENDS = ("cudnn", "trtllm", "cutlass", "cute-dsl", "cutedsl_low_latency", "b12x")
SUPPORTED_CC = (120, 121, 90)  # 90: only through the emulated MMA atom (FLASHINFER_SM12X_EMULATE=1)
# W4A8's FP4 operand is loaded unpacked (SM100 LDSM/TMA types SM90 lacks): not emulated, see the notes.
EMULATED_FORMATS = ("mxfp4", "nvfp4")

MENU_FORMATS = ("mxfp4", "nvfp4", "mxfp8_mxfp4")
MENU = {
    "format": MENU_FORMATS,
    "out_dtype": ("bfloat16", "float16"),
    "tile_m": (64, 128, 256),
    "tile_n": (32, 64, 128, 256),
    "tile_k": (128, 256),
    "schedule": ("pingpong", "cooperative", "streamk"),
    "emulated": (False, True),
    "swap_ab": (False, True),
}
_OUT_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_BLOCK = {"mxfp4": 32, "nvfp4": 16, "mxfp8_mxfp4": 32}


@dataclass(frozen=True)
class Tactic:
    schedule: str
    tile_m: int
    tile_n: int
    tile_k: int
    swap_ab: bool = False  # compute D^T = B A^T (weights in the 128-row tile) for few activation rows

    @property
    def name(self) -> str:
        return f"{self.schedule}_{self.tile_m}x{self.tile_n}x{self.tile_k}" + ("_swapab" if self.swap_ab else "")


def applicable(fmt: str, tactic: Tactic) -> bool:
    """W4A8 has different A and B formats (it cannot swap them) and keeps FP4 unpacked in smem (the 64-row
    mainloop serves packed e2m1 x e2m1 only)."""
    return not (fmt == "mxfp8_mxfp4" and (tactic.swap_ab or tactic.tile_m == 64))


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
    Tactic("pingpong", 64, 128, 128),  # our 64-row mainloop (mm_fp4_m64_mainloop.cuh)
)

# The shipped menu per (target, format): only configs whose compile proof passed for that target (native MMA
# in SASS, no spill instructions in the mainloop, smem <= 101,376 B). Filled from scripts/compile_sweep.py's
# table (in the issue notes); re-run the sweep when a template or this menu changes.
_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64 = CANDIDATES
# Cooperative 256x128 joined after the proof's mainloop rule stopped counting ptxas's out-of-line wait stubs as
# loops (its spills are in the prologue/epilogue only); the other failures are real mainloop spills.
PROVEN: dict[str, dict[str, tuple[Tactic, ...]]] = {  # sweep of 2026-11-22, nvcc 13.0, CUTLASS 4.5.0
    "sm_120a": {
        "mxfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SW32, _SW64, _M64),
        "nvfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _SW32, _SW64, _M64),
        "mxfp8_mxfp4": (_PP128, _CO128, _PP64, _PP32),
    },
    "sm_121a": {  # ptxas puts spill instructions into Pingpong 128x128's mainloop for sm_121a (not for sm_120a)
        "mxfp4": (_CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64),
        "nvfp4": (_PP128, _CO128, _PP64, _PP32, _CO256, _PP128K256, _SK128, _SW32, _SW64, _M64),
        "mxfp8_mxfp4": (_CO128, _PP64, _PP32, _SK128),
    },
}
EMULATION_MENU_OF = "sm_120a"  # the emulated SM90 build runs the sm_120a menu


def shipped(fmt: str, target: Target | None = None) -> tuple[Tactic, ...]:
    """The proven tactics for `fmt` on `target`; a target without its own sweep gets those proven everywhere."""
    name = EMULATION_MENU_OF if target is None or target.emulated else target.name
    if name in PROVEN:
        return PROVEN[name][fmt]
    common = [t for t in CANDIDATES if all(t in menu[fmt] for menu in PROVEN.values())]
    return tuple(common)


SHIPPED = {fmt: shipped(fmt) for fmt in MENU_FORMATS}
TACTICS = SHIPPED["mxfp4"]


def mm_fp4_spec(target: Target, fmt: str, tactic: Tactic, out_dtype: torch.dtype) -> ModuleSpec:
    params = {
        "format": fmt, "out_dtype": _OUT_NAMES.get(out_dtype, str(out_dtype)), "tile_m": tactic.tile_m,
        "tile_n": tactic.tile_n, "tile_k": tactic.tile_k, "schedule": tactic.schedule, "emulated": target.emulated,
        "swap_ab": tactic.swap_ab,
    }
    text = render("mm_fp4.cu.jinja", params, MENU)
    group = f"{fmt}_{params['out_dtype']}_{tactic.name}"
    return ModuleSpec(op="mm_fp4", group=group, target=target, sources=(Source("mm_fp4.cu", text),),
                      uses_cutlass=True)


def heuristic(m: int, n: int, k: int, fmt: str = "mxfp4", target: Target | None = None) -> list[Tactic]:
    """The format's shipped tactics in preference order (unmeasured on SM12x: reasoned defaults; FlashInfer's
    autotuner, through backend="auto" inside `flashinfer.autotune()`, decides for real).

    Decode / small M (m <= 64) reads the whole weight once whatever the tile, so the tile should waste little
    MMA work and still give enough CTAs. On a wide layer (ceil(N/128) >= 128 CTAs fill the GPU by themselves):
    m <= 32 swapped A/B with an N' tile that covers m; 32 < m <= 64 the 64-row tile (same CTA count and waste
    as swapping, with a row-major store). On a narrower layer: 128-row Pingpong with the narrowest N tile (more
    CTAs in flight), then the 64-row tile. 64 < m <= 128: the 64-row tile while its doubled CTA count still fits
    one wave, else Pingpong 128x128. Larger M: Pingpong 128x128 up to 256 rows; then Cooperative, with 256-row
    tiles once the grid has several waves; stream-K last."""
    tiles = -(-m // 128) * -(-n // 128)
    wide = -(-n // 128) >= 128

    def preference(t: Tactic) -> tuple:
        if m <= 64:
            if wide and m <= 32:
                rank = 0 if t.swap_ab and t.tile_n >= m else 1 if t.tile_m == 64 else 2 if t.swap_ab else 3
            elif wide:
                rank = 0 if t.tile_m == 64 else 1 if t.swap_ab and t.tile_n >= m else 2
            else:
                rank = 0 if t.tile_m == 128 and not t.swap_ab else 1 if t.tile_m == 64 else 2
            return (rank, t.schedule != "pingpong", t.tile_n, t.tile_k)
        if m <= 128 and 2 * -(-n // 128) <= 170:
            return (t.tile_m != 64, t.swap_ab, t.schedule != "pingpong", abs(t.tile_n - 128), t.tile_k)
        if m <= 256:
            return (t.swap_ab, t.tile_m != 128, t.schedule != "pingpong", abs(t.tile_n - 128), t.tile_k)
        big = tiles >= 4 * 170 and m >= 1024
        return (t.swap_ab, t.tile_m == 64, t.schedule == "streamk", t.schedule != "cooperative",
                (t.tile_m != 256) if big else t.tile_m, abs(t.tile_n - 128), t.tile_k)

    return sorted(shipped(fmt, target), key=preference)


@dataclass
class Problem:
    fmt: str
    m: int
    n: int
    k: int
    a: torch.Tensor  # [m, k/2] uint8 (fp4) or [m, k] uint8 view of e4m3 (W4A8)
    b: torch.Tensor  # [n, k/2] uint8, K-major (the transpose of FlashInfer's `b`)
    sfa: torch.Tensor  # 128x4 layout, uint8 view, contiguous
    sfb: torch.Tensor
    alpha: torch.Tensor | None
    out: torch.Tensor
    # flashinfer.mm_fp4's positional arguments (out allocated), for backend="auto"'s autotuner inputs
    flashinfer_args: tuple | None = None


def _round_up(x: int, to: int) -> int:
    return -(-x // to) * to


def _require_tensor(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_scales(name: str, sf: torch.Tensor, rows: int, kb: int, fmt: str, transposed: bool) -> torch.Tensor:
    """128x4-layout scales: [round_up(rows,128), round_up(kb,4)] (FlashInfer passes b's transposed) or flat."""
    allowed = (torch.float8_e4m3fn, torch.uint8) if fmt == "nvfp4" else (torch.uint8, torch.float8_e8m0fnu)
    shape = (_round_up(rows, 128), _round_up(kb, 4))
    # FlashInfer's defaults (use_nvfp4=True, block_size=16) read MXFP4 data as NVFP4: E8M0 scales, or half as many
    # scale columns as NVFP4 has, are MXFP4's.
    mxfp4_numel = shape[0] * _round_up(kb // 2, 4)
    looks_mxfp4 = fmt == "nvfp4" and (sf.dtype == torch.float8_e8m0fnu or sf.numel() == mxfp4_numel)
    hint = (" These look like MXFP4 scales: MXFP4 is block_size=32, use_nvfp4=False (FlashInfer's defaults "
            "use_nvfp4=True, block_size=16 mean NVFP4)." if looks_mxfp4 else "")
    if sf.dtype not in allowed:
        raise TypeError(f"{name} must be one of {allowed} for {fmt}, got {sf.dtype}.{hint}")
    if sf.ndim == 2 and transposed:
        sf = sf.T
    if sf.ndim == 2 and tuple(sf.shape) != shape:
        raise ValueError(f"{name} must hold {shape} scales in the 128x4 layout (rows padded to 128, scale "
                         f"columns to a multiple of 4), got {tuple(sf.shape)}{' (transposed)' if transposed else ''}"
                         f".{hint}")
    if sf.ndim not in (1, 2) or sf.numel() != shape[0] * shape[1]:
        raise ValueError(f"{name} must have {shape[0] * shape[1]} elements (128x4 layout), got {sf.numel()}.{hint}")
    if not sf.is_contiguous():
        raise ValueError(f"{name} must be contiguous in the 128x4 layout" + (" after .T" if transposed else ""))
    return sf.view(torch.uint8)


def _column_major_a(a: torch.Tensor, b: torch.Tensor, fp8_a: bool) -> str | None:
    """The error text for a column-major `a` (its transpose is contiguous), else None."""
    if a.is_contiguous() or not a.T.is_contiguous():
        return None
    row = "[m, k]" if fp8_a else "[m, k/2]"
    transposed_k = a.shape[0] * (1 if fp8_a else 2)
    fix = (f"a.T is that operand (K={transposed_k}), pass a.T" if transposed_k == b.shape[0] * 2
           else "pass a.contiguous()")
    return (f"a is column-major (shape {tuple(a.shape)}, strides {tuple(a.stride())}); mm_fp4 takes a row-major "
            f"{row} a: {fix}")


def validate(a: Any, b: Any, a_descale: Any, b_descale: Any, alpha: Any, out_dtype: Any, out: Any,
             block_size: int, use_8x4_sf_layout: bool, use_nvfp4: bool, fp8_a: bool = False) -> Problem:
    """Every check that can fail, before anything is allocated or launched (TypeError / ValueError)."""
    for name, t in (("a", a), ("b", b), ("a_descale", a_descale), ("b_descale", b_descale)):
        _require_tensor(name, t)
    fmt = "mxfp8_mxfp4" if fp8_a else ("nvfp4" if use_nvfp4 else "mxfp4")
    if block_size != _BLOCK[fmt]:
        raise ValueError(f"{fmt} uses block_size={_BLOCK[fmt]}, got {block_size}"
                         + ("" if use_nvfp4 or fp8_a else " (MXFP4 is block_size=32, use_nvfp4=False)"))
    if use_8x4_sf_layout:
        raise ValueError(f"the {OURS} backend reads the 128x4 scale layout; use_8x4_sf_layout=True is trtllm's")
    fp4 = (torch.uint8, getattr(torch, "float4_e2m1fn_x2", torch.uint8))
    if fp8_a and a.dtype != torch.float8_e4m3fn:
        raise TypeError(f"a must be float8_e4m3fn (MXFP8) for W4A8, got {a.dtype}")
    if not fp8_a and a.dtype not in fp4:
        raise TypeError(f"a must be packed e2m1 (uint8 or float4_e2m1fn_x2), got {a.dtype}")
    if b.dtype not in fp4:
        raise TypeError(f"b must be packed e2m1 (uint8 or float4_e2m1fn_x2), got {b.dtype}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    k = a.shape[1] * (1 if fp8_a else 2)
    if b.shape[0] * 2 != k:
        raise ValueError(_column_major_a(a, b, fp8_a)
                         or f"K mismatch: a gives K={k}, b (shape [k/2, n]) gives K={b.shape[0] * 2}")
    m, n = a.shape[0], b.shape[1]
    if m == 0 or n == 0 or k == 0:
        raise ValueError(f"empty problem m={m}, n={n}, k={k}")
    # TMA needs 16-byte rows: 32 FP4 elements. W4A8 keeps FP4 unpacked in shared memory, 128-element rows.
    k_align = 128 if fp8_a else 32
    if k % k_align:
        why = "W4A8 keeps FP4 unpacked in smem" if fp8_a else "TMA needs 16-byte rows"
        raise ValueError(f"K={k} must be a multiple of {k_align} ({why})")
    if n % 8:
        raise ValueError(f"N={n} must be a multiple of 8 (16-byte rows of the bf16/fp16 output for TMA)")
    if not a.is_contiguous():
        raise ValueError(_column_major_a(a, b, fp8_a) or "a must be contiguous (row-major [m, k/2])")
    if not b.T.is_contiguous():
        raise ValueError("b must be the transpose of a contiguous [n, k/2] weight (pass w.T, column-major)")
    devices = {t.device for t in (a, b, a_descale, b_descale)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = a.device
    sfa = _check_scales("a_descale", a_descale, m, k // block_size, fmt, transposed=False)
    sfb = _check_scales("b_descale", b_descale, n, k // block_size, fmt, transposed=True)
    if alpha is not None:
        _require_tensor("alpha", alpha)
        if alpha.dtype != torch.float32 or alpha.numel() != 1:
            raise ValueError(f"alpha must be a one-element float32 tensor, got {alpha.dtype} x {alpha.numel()}")
        if alpha.device != device:
            raise ValueError(f"alpha must be on {device}, got {alpha.device}")
    if out_dtype not in _OUT_NAMES:
        raise ValueError(f"out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
    if out is not None:
        _require_tensor("out", out)
        if out.dtype != out_dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected out_dtype={out_dtype}")
        if tuple(out.shape) != (m, n):
            raise ValueError(f"out must have shape {(m, n)}, got {tuple(out.shape)}")
        if out.device != device or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous tensor on {device}")
    if device.type != "cuda":
        raise ValueError(f"mm_fp4 runs on CUDA tensors, got {device}")
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=device)
    return Problem(fmt, m, n, k, a.view(torch.uint8), b.T.view(torch.uint8), sfa, sfb, alpha, out)


def _target(device: torch.device) -> Target:
    return target_for_device(torch.cuda.get_device_capability(device))


# Loaded modules by config: after the first call a GEMM costs a dict lookup on the host, not a template render
# and a cache-key hash (decode steps are short enough for that to show).
_MODULES: dict[tuple[str, str, Tactic, torch.dtype], Any] = {}


def _module(target: Target, fmt: str, tactic: Tactic, out_dtype: torch.dtype) -> Any:
    key = (target.name, fmt, tactic, out_dtype)
    module = _MODULES.get(key)
    if module is None:
        module = _MODULES[key] = load_module(mm_fp4_spec(target, fmt, tactic, out_dtype))
    return module


def run_tactic(p: Problem, tactic: Tactic, enable_pdl: bool = True) -> torch.Tensor:
    target = _target(p.out.device)
    module = _module(target, p.fmt, tactic, p.out.dtype)
    workspace = torch.empty(max(int(module.workspace_bytes(p.m, p.n, p.k)), 1), dtype=torch.uint8,
                            device=p.out.device)
    module.run(p.a, p.b, p.sfa, p.sfb, p.alpha, p.out, workspace, bool(enable_pdl and not target.emulated))
    return p.out


def _flashinfer_runner_base() -> type:
    try:
        from flashinfer.autotuner import TunableRunner

        return TunableRunner
    except Exception:  # flashinfer absent or not importable here: a plain base keeps the API usable
        return object


class MmFp4Runner(_flashinfer_runner_base()):  # type: ignore[misc]
    """FlashInfer autotuner runner: same `inputs` list as flashinfer.mm_fp4's runners
    ([a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4, workspace]), so one
    `AutoTuner.choose_one("fp4_gemm", ...)` compares our tactics with cudnn, b12x and cutlass."""

    def get_valid_tactics(self, inputs: list[Any], profile: Any = None) -> list[int]:
        a, b = inputs[0], inputs[1]
        fmt = "mxfp4" if not inputs[8] else "nvfp4"
        return list(range(len(heuristic(a.shape[0], b.shape[1], a.shape[1] * 2, fmt))))

    def __init__(self, enable_pdl: bool = True) -> None:
        self.enable_pdl = enable_pdl

    def forward(self, inputs: list[Any], tactic: int = -1, do_preparation: bool = False, **kwargs: Any) -> Any:
        a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_nvfp4 = inputs[:9]
        p = validate(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, False, use_nvfp4)
        order = heuristic(p.m, p.n, p.k, p.fmt, _target(p.out.device))
        return run_tactic(p, order[max(tactic, 0)], kwargs.get("enable_pdl", self.enable_pdl))


def _delegate(backend: str, *args: Any) -> torch.Tensor:
    import flashinfer

    return flashinfer.mm_fp4(*args, backend=backend)


def mm_fp4(
    a: torch.Tensor,
    b: torch.Tensor,
    a_descale: torch.Tensor,
    b_descale: torch.Tensor,
    alpha: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    block_size: int = 16,
    use_8x4_sf_layout: bool = False,
    backend: str = "auto",
    use_nvfp4: bool = True,
    enable_pdl: bool = True,
) -> torch.Tensor:
    """FlashInfer-compatible FP4 GEMM. backend: "cutlass_sm12x", "auto" (ours on SM12x), or a FlashInfer
    backend name (delegated to flashinfer.mm_fp4 unchanged)."""
    if backend in FLASHINFER_BACKENDS:
        return _delegate(backend, a, b, a_descale, b_descale, alpha, out_dtype, out, block_size,
                         use_8x4_sf_layout, use_nvfp4, enable_pdl)
    if backend not in (OURS, "auto"):
        raise ValueError(f"unknown backend {backend!r}; use {OURS!r}, 'auto' or one of {FLASHINFER_BACKENDS}")
    p = validate(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout, use_nvfp4)
    p.flashinfer_args = (a, b, a_descale, b_descale, alpha, out_dtype, p.out, block_size, use_8x4_sf_layout,
                         backend, use_nvfp4)
    return _dispatch()(p.out, p, backend=backend, enable_pdl=enable_pdl)


def _run_ours(out: torch.Tensor, p: Problem, backend: str = OURS, enable_pdl: bool = True) -> torch.Tensor:
    """`out` leads so that FlashInfer's backend_requirement reads the compute capability off it."""
    target = _target(p.out.device)  # ArchError on chips we do not serve (with the fix in the message)
    if target.emulated and backend == "auto":
        raise ArchError("backend='auto' never picks the emulated SM90 path; ask for backend='cutlass_sm12x'")
    if backend == "auto" and p.flashinfer_args is not None and _flashinfer_runner_base() is not object:
        # FlashInfer's autotuner over our tactics and its SM12x backends; untuned, its fallback is ours.
        from ..integrations import flashinfer_fp4_gemm

        cc = torch.cuda.get_device_capability(p.out.device)
        flashinfer_fp4_gemm.choose_and_run(p.flashinfer_args, cc, MmFp4Runner(), enable_pdl)
        return p.out
    return run_tactic(p, heuristic(p.m, p.n, p.k, p.fmt, target)[0], enable_pdl)


_DISPATCH: Any = None


def _dispatch() -> Any:
    """_run_ours behind FlashInfer's backend_requirement/supported_compute_capability checks (compute
    capability and backend support, BackendSupportedError otherwise), when FlashInfer is importable."""
    global _DISPATCH
    if _DISPATCH is None:
        try:
            from flashinfer.utils import backend_requirement, supported_compute_capability
        except Exception:  # FlashInfer missing or broken here: the same function without its checks
            _DISPATCH = _run_ours
            return _DISPATCH

        @supported_compute_capability(list(SUPPORTED_CC))
        def _ours_requirement(out: torch.Tensor, p: Problem, backend: str = OURS, enable_pdl: bool = True) -> bool:
            return True  # shapes, dtypes and layouts were checked by validate() with typed errors

        def _auto(suitable: list[str], *args: Any, **kwargs: Any) -> list[str]:
            return [b for b in suitable if b == OURS]

        _DISPATCH = backend_requirement({OURS: _ours_requirement}, heuristic_func=_auto)(_run_ours)
    return _DISPATCH


def mm_mxfp8_mxfp4(
    a: torch.Tensor,
    b: torch.Tensor,
    a_descale: torch.Tensor,
    b_descale: torch.Tensor,
    alpha: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    enable_pdl: bool = True,
) -> torch.Tensor:
    """W4A8: a [m, k] float8_e4m3fn (MXFP8, E8M0 per 32), b = w.T with w [n, k/2] packed e2m1 (MXFP4);
    scales as in mm_fp4 (128x4 layout, b_descale transposed)."""
    p = validate(a, b, a_descale, b_descale, alpha, out_dtype, out, 32, False, False, fp8_a=True)
    return run_tactic(p, heuristic(p.m, p.n, p.k, p.fmt, _target(p.out.device))[0], enable_pdl)


def required_instruction(fmt: str, target: Target) -> str:
    """The SASS instruction a compile proof must find: the native block-scaled MMA, or the emulation's HMMA."""
    if target.emulated:
        return "HMMA.16816.F32.BF16"
    return "QMMA.SF" if fmt == "mxfp8_mxfp4" else "OMMA.SF"
