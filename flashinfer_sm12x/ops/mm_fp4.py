# SPDX-License-Identifier: Apache-2.0
"""The dense block-scaled GEMM op: validate -> plan -> run (the kernel family is kernels/mm_fp4.py; FlashInfer's
`mm_fp4` signature, backend names and autotuner live in integrations/flashinfer_mm_fp4.py).

A call validates its inputs once (typed errors before anything is allocated or launched), then looks its plan up
by shape: the loaded module, the tactic and the workspace size are computed on the first call of a shape and
cached, so a repeated shape costs a dictionary lookup and the launch. The module keeps the launch's kernel
parameters (TMA descriptors) per shape and device addresses (include/flashinfer_sm12x/gemm/cached_launch.cuh).

Host time: the common call (uint8 operands and scales in FlashInfer's layouts, one CUDA device) passes a fast check
that reads each attribute once and makes no tensor views; anything it does not recognise takes the full validation,
which raises the typed errors. Both return the same Problem for the same valid input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..checks import INDEX_LIMIT, check_index_range, check_no_alias, require_tensor, round_up
from ..jit.arch import Target, device_facts
from ..kernels.family import OUT_DTYPES, Tactic
from ..kernels.mm_fp4 import BATCH_INVARIANT_TACTIC, BLOCK_SIZE, FAMILY, heuristic
from .device_guard import on_device

OURS = "cutlass_sm12x"  # this package's backend name among FlashInfer's


@dataclass(slots=True)
class Problem:
    """A validated GEMM: operands as the module's `run` takes them and the output to write."""

    fmt: str
    m: int
    n: int
    k: int
    a: torch.Tensor  # [m, k/2] uint8 (fp4) or [m, k] uint8 view of e4m3 (W4A8), contiguous
    b: torch.Tensor  # FlashInfer's `b`: [k/2, n] uint8, the transpose of the contiguous K-major weight [n, k/2]
    sfa: torch.Tensor  # 128x4 layout, uint8, contiguous (flat or [rows, scale columns])
    sfb: torch.Tensor  # 128x4 layout, uint8, flat or transposed as FlashInfer passes it (one dense block)
    alpha: torch.Tensor | None
    out: torch.Tensor


def _mxfp4_hint(sf: torch.Tensor, fmt: str, padded_rows: int, kb: int) -> str:
    """FlashInfer's defaults (use_nvfp4=True, block_size=16) read MXFP4 data as NVFP4: E8M0 scales, or half as many
    scale columns as NVFP4 has, are MXFP4's. Only computed for an error message."""
    mxfp4_numel = padded_rows * round_up(kb // 2, 4)
    looks_mxfp4 = fmt == "nvfp4" and (sf.dtype == torch.float8_e8m0fnu or sf.numel() == mxfp4_numel)
    return (" These look like MXFP4 scales: MXFP4 is block_size=32, use_nvfp4=False (FlashInfer's defaults "
            "use_nvfp4=True, block_size=16 mean NVFP4)." if looks_mxfp4 else "")


def _check_scales(name: str, sf: torch.Tensor, rows: int, kb: int, fmt: str, transposed: bool) -> torch.Tensor:
    """128x4-layout scales: [round_up(rows,128), round_up(kb,4)] (FlashInfer passes b's transposed) or flat.
    Returns `sf` itself (uint8-viewed when needed): the module reads the dense block whichever way it is viewed."""
    allowed = (torch.float8_e4m3fn, torch.uint8) if fmt == "nvfp4" else (torch.uint8, torch.float8_e8m0fnu)
    shape = (round_up(rows, 128), round_up(kb, 4))
    if sf.dtype not in allowed:
        raise TypeError(f"{name} must be one of {allowed} for {fmt}, got {sf.dtype}."
                        + _mxfp4_hint(sf, fmt, shape[0], kb))
    layout = sf.T if sf.ndim == 2 and transposed else sf
    if layout.ndim == 2 and tuple(layout.shape) != shape:
        got = f"{tuple(layout.shape)}{' (transposed)' if transposed else ''}"
        raise ValueError(f"{name} must hold {shape} scales in the 128x4 layout (rows padded to 128, scale "
                         f"columns to a multiple of 4), got {got}." + _mxfp4_hint(sf, fmt, shape[0], kb))
    if layout.ndim not in (1, 2) or layout.numel() != shape[0] * shape[1]:
        raise ValueError(f"{name} must have {shape[0] * shape[1]} elements (128x4 layout), got {layout.numel()}."
                         + _mxfp4_hint(sf, fmt, shape[0], kb))
    if not layout.is_contiguous():
        raise ValueError(f"{name} must be contiguous in the 128x4 layout" + (" after .T" if transposed else ""))
    return sf if sf.dtype == torch.uint8 else sf.view(torch.uint8)


_FP4_DTYPES = (torch.uint8, getattr(torch, "float4_e2m1fn_x2", torch.uint8))


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
    """Every check that can fail, before anything is allocated or launched.

    Parameters
    ----------
    a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout, use_nvfp4
        `flashinfer.mm_fp4`'s arguments (`b` = w.T, `b_descale` transposed).
    fp8_a : bool
        W4A8: `a` is MXFP8 (float8_e4m3fn).

    Returns
    -------
    Problem
        What the kernel runs; `out` is allocated when None. M = 0 is valid (an empty batch): the caller returns the
        empty [0, n] `out` without launching, as torch.matmul does. N = 0 and K = 0 are refused: a weight without
        output features or without inputs is a caller bug, not a batch size, and K must be a multiple of the TMA
        row anyway. M, N, K and each scale tensor's element count must stay below 2^31 (the kernels take them as
        32-bit ints); M * N past 2^31 is fine (64-bit element offsets).

    Raises
    ------
    TypeError, ValueError
        Bad input, with the same messages whichever path checked it.
    """
    if not fp8_a:
        p = _validate_common(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout,
                             use_nvfp4)
        if p is not None:
            return p
    return _validate_full(a, b, a_descale, b_descale, alpha, out_dtype, out, block_size, use_8x4_sf_layout,
                          use_nvfp4, fp8_a)


_Tensor = torch.Tensor
_LIMIT = INDEX_LIMIT
_U8 = torch.uint8
_F32 = torch.float32
_BF16, _F16 = torch.bfloat16, torch.float16


def _validate_common(a: Any, b: Any, sfa: Any, sfb: Any, alpha: Any, out_dtype: Any, out: Any, block_size: int,
                     use_8x4_sf_layout: bool, use_nvfp4: bool) -> Problem | None:
    """The Problem for the common valid call (FP4 `a`; uint8 operands and scales; `b` = w.T of a contiguous weight;
    scales flat or FlashInfer's 128x4 shapes; every tensor on one CUDA device), else None: the caller then runs the
    full validation, which raises the typed error or accepts a rarer form. Reads each attribute once; no views."""
    if not (isinstance(a, _Tensor) and isinstance(b, _Tensor) and isinstance(sfa, _Tensor)
            and isinstance(sfb, _Tensor)):
        return None
    if (a.dtype is not _U8 or b.dtype is not _U8 or sfa.dtype is not _U8 or sfb.dtype is not _U8 or use_8x4_sf_layout
            or a.ndim != 2 or b.ndim != 2 or not a.is_contiguous() or not a.is_cuda):
        return None
    block = 16 if use_nvfp4 else 32
    m, half_k = a.shape
    b_rows, n = b.shape
    if (block_size != block or b_rows != half_k or m <= 0 or half_k <= 0 or half_k % 16 or n <= 0 or n % 8
            or b.stride() != (1, half_k) or m > _LIMIT or n > _LIMIT or half_k > _LIMIT // 2):
        return None
    device = a.get_device()
    if (b.get_device() != device or sfa.get_device() != device or sfb.get_device() != device or not b.is_cuda
            or not sfa.is_cuda or not sfb.is_cuda):
        return None
    k = 2 * half_k
    scale_cols = -(-(k // block) // 4) * 4
    rows_a = -(-m // 128) * 128
    rows_b = -(-n // 128) * 128
    if rows_a * scale_cols > _LIMIT or rows_b * scale_cols > _LIMIT:
        return None
    sfa_ndim = sfa.ndim
    if not sfa.is_contiguous() or not ((sfa_ndim == 2 and sfa.shape == (rows_a, scale_cols))
                                       or (sfa_ndim == 1 and sfa.numel() == rows_a * scale_cols)):
        return None
    sfb_ndim = sfb.ndim
    if sfb_ndim == 2:
        if sfb.shape != (scale_cols, rows_b) or sfb.stride() != (1, scale_cols):
            return None
    elif sfb_ndim != 1 or sfb.numel() != rows_b * scale_cols or not sfb.is_contiguous():
        return None
    if alpha is not None and (not isinstance(alpha, _Tensor) or alpha.dtype is not _F32 or alpha.numel() != 1
                              or not alpha.is_cuda or alpha.get_device() != device):
        return None
    if out_dtype is not _BF16 and out_dtype is not _F16:
        return None
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    elif (not isinstance(out, _Tensor) or out.dtype is not out_dtype or out.shape != (m, n) or not out.is_contiguous()
          or not out.is_cuda or out.get_device() != device or _touches(out, a, b, sfa, sfb, alpha)):
        return None  # the full validation names the problem (an aliased out included)
    return Problem("nvfp4" if use_nvfp4 else "mxfp4", m, n, k, a, b, sfa, sfb, alpha, out)


def _touches(out: torch.Tensor, *inputs: torch.Tensor | None) -> bool:
    """Whether dense `out` and one of the dense inputs share bytes (the fast path's tensors are all dense: contiguous
    or the transpose of a contiguous tensor), from their data pointers alone."""
    o0 = out.data_ptr()
    o1 = o0 + out.numel() * out.element_size()
    for t in inputs:
        if t is not None:
            t0 = t.data_ptr()
            if t0 < o1 and o0 < t0 + t.numel() * t.element_size():
                return True
    return False


def _validate_full(a: Any, b: Any, a_descale: Any, b_descale: Any, alpha: Any, out_dtype: Any, out: Any,
                   block_size: int, use_8x4_sf_layout: bool, use_nvfp4: bool, fp8_a: bool) -> Problem:
    """Every check in the order the error messages assume (TypeError / ValueError); any accepted form."""
    for name, t in (("a", a), ("b", b), ("a_descale", a_descale), ("b_descale", b_descale)):
        require_tensor(name, t)
    fmt = "mxfp8_mxfp4" if fp8_a else ("nvfp4" if use_nvfp4 else "mxfp4")
    if block_size != BLOCK_SIZE[fmt]:
        raise ValueError(f"{fmt} uses block_size={BLOCK_SIZE[fmt]}, got {block_size}"
                         + ("" if use_nvfp4 or fp8_a else " (MXFP4 is block_size=32, use_nvfp4=False)"))
    if use_8x4_sf_layout:
        raise ValueError(f"the {OURS} backend reads the 128x4 scale layout; use_8x4_sf_layout=True is trtllm's")
    if fp8_a and a.dtype != torch.float8_e4m3fn:
        raise TypeError(f"a must be float8_e4m3fn (MXFP8) for W4A8, got {a.dtype}")
    if not fp8_a and a.dtype not in _FP4_DTYPES:
        raise TypeError(f"a must be packed e2m1 (uint8 or float4_e2m1fn_x2), got {a.dtype}")
    if b.dtype not in _FP4_DTYPES:
        raise TypeError(f"b must be packed e2m1 (uint8 or float4_e2m1fn_x2), got {b.dtype}")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    k = a.shape[1] * (1 if fp8_a else 2)
    if b.shape[0] * 2 != k:
        raise ValueError(_column_major_a(a, b, fp8_a)
                         or f"K mismatch: a gives K={k}, b (shape [k/2, n]) gives K={b.shape[0] * 2}")
    m, n = a.shape[0], b.shape[1]
    if n == 0 or k == 0:  # M = 0 is an empty batch (served); N = 0 or K = 0 is a malformed weight
        raise ValueError(f"empty problem m={m}, n={n}, k={k}: N and K must be positive (M = 0 is served)")
    check_index_range(None, M=m, N=n, K=k)
    # TMA needs 16-byte rows: 32 FP4 elements. W4A8 keeps FP4 unpacked in shared memory, 128-element rows.
    k_align = 128 if fp8_a else 32
    if k % k_align:
        why = "W4A8 keeps FP4 unpacked in smem" if fp8_a else "TMA needs 16-byte rows"
        raise ValueError(f"K={k} must be a multiple of {k_align} ({why})")
    if n % 8:
        raise ValueError(f"N={n} must be a multiple of 8 (16-byte rows of the bf16/fp16 output for TMA)")
    if not a.is_contiguous():
        raise ValueError(_column_major_a(a, b, fp8_a) or "a must be contiguous (row-major [m, k/2])")
    if not b.T.is_contiguous():  # the kernel reads the weight [n, k/2] K-major
        raise ValueError("b must be the transpose of a contiguous [n, k/2] weight (pass w.T, column-major)")
    device = a.device
    if not (b.device == device and a_descale.device == device and b_descale.device == device):
        devices = {t.device for t in (a, b, a_descale, b_descale)}
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    sfa = _check_scales("a_descale", a_descale, m, k // block_size, fmt, transposed=False)
    sfb = _check_scales("b_descale", b_descale, n, k // block_size, fmt, transposed=True)
    check_index_range(None, a_descale_elements=sfa.numel(), b_descale_elements=sfb.numel())
    if alpha is not None:
        require_tensor("alpha", alpha)
        if alpha.dtype != torch.float32 or alpha.numel() != 1:
            raise ValueError(f"alpha must be a one-element float32 tensor, got {alpha.dtype} x {alpha.numel()}")
        if alpha.device != device:
            raise ValueError(f"alpha must be on {device}, got {alpha.device}")
    if not isinstance(out_dtype, torch.dtype) or str(out_dtype).removeprefix("torch.") not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype!r}")
    if out is not None:
        require_tensor("out", out)
        if out.dtype != out_dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected out_dtype={out_dtype}")
        if tuple(out.shape) != (m, n):
            raise ValueError(f"out must have shape {(m, n)}, got {tuple(out.shape)}")
        if out.device != device or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous tensor on {device}")
        check_no_alias(out, (("a", a), ("b", b), ("a_descale", a_descale), ("b_descale", b_descale),
                             ("alpha", alpha)), None)
    if not a.is_cuda:
        raise ValueError(f"mm_fp4 runs on CUDA tensors, got {device}")
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=device)
    # Byte views only where the dtype is not uint8 already (each view costs host time on every call).
    return Problem(fmt, m, n, k, a if a.dtype == torch.uint8 else a.view(torch.uint8),
                   b if b.dtype == torch.uint8 else b.view(torch.uint8), sfa, sfb, alpha, out)


@dataclass(frozen=True)
class Plan:
    tactic: Tactic
    module: Any
    workspace_bytes: int
    pdl: bool  # programmatic dependent launch is allowed (not in the emulated SM90 builds)
    launch: Any = None  # module.run, looked up once


_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 4096  # distinct (target, format, shape, dtype, tactic) seen; a serving process sees a few hundred


def plan(p: Problem, tactic: Tactic | None = None, *, batch_invariant: bool = False,
         target: Target | None = None, sm_count: int | None = None) -> Plan:
    """The module, tactic and workspace size for `p` (the heuristic's first choice unless `tactic` is given;
    `batch_invariant` pins BATCH_INVARIANT_TACTIC). Cached per (target, SM count, format, shape, output dtype,
    tactic). Without `target` both come from `p.out`'s device (`jit.arch.device_facts`); with it, the SM count
    defaults to the target's assumed one (kernels.family.assumed_sm_count)."""
    if target is None:
        facts = device_facts(p.out.device)
        target, sm_count = facts.target, sm_count or facts.sm_count
    key = (target, sm_count, p.fmt, p.m, p.n, p.k, p.out.dtype, tactic, batch_invariant)
    found = _PLANS.get(key)
    if found is not None:
        return found
    if tactic is None:
        tactic = BATCH_INVARIANT_TACTIC if batch_invariant else heuristic(p.m, p.n, p.k, p.fmt, target, sm_count)[0]
    module = FAMILY.load(target, p.fmt, tactic, p.out.dtype)
    found = Plan(tactic, module, int(module.workspace_bytes(p.m, p.n, p.k)), not target.emulated,
                 getattr(module, "run", None))
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = found
    return found


def run(p: Problem, pl: Plan, enable_pdl: bool = True) -> torch.Tensor:
    """Launch `pl` on `p` (asynchronous on the current stream; no host synchronisation). Returns p.out.

    Only stream-K tactics use a workspace (allocated per call from torch's stream-ordered caching allocator); the
    others pass None. An empty batch (M = 0) launches nothing."""
    if p.m == 0:
        return p.out
    workspace = (torch.empty(pl.workspace_bytes, dtype=torch.uint8, device=p.out.device) if pl.workspace_bytes
                 else None)
    with on_device(p.out.device.index):
        pl.launch(p.a, p.b, p.sfa, p.sfb, p.alpha, p.out, workspace, bool(enable_pdl and pl.pdl))
    return p.out


def run_tactic(p: Problem, tactic: Tactic, enable_pdl: bool = True) -> torch.Tensor:
    """Run one given tactic on `p` (tests, the autotuner's runner)."""
    return run(p, plan(p, tactic), enable_pdl)


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
    """W4A8 GEMM: MXFP8 activations times MXFP4 weights, on SM120/SM121.

    Parameters
    ----------
    a : torch.Tensor
        Activations, float8_e4m3fn [m, k] (from `mxfp8_quantize`), K a multiple of 128.
    b : torch.Tensor
        Weights, the transpose ``w.T`` of a packed e2m1 uint8 [n, k/2] tensor (column-major [k/2, n]).
    a_descale, b_descale : torch.Tensor
        E8M0 scales per 32 elements in the 128x4 layout; `b_descale` passed transposed, as FlashInfer does.
    alpha : torch.Tensor, optional
        One-element float32 device tensor multiplying the product.
    out_dtype : torch.dtype
        torch.bfloat16 or torch.float16.
    out : torch.Tensor, optional
        Contiguous [m, n] output of `out_dtype`, allocated when None.
    enable_pdl : bool
        Programmatic dependent launch (ignored where unsupported).

    Returns
    -------
    torch.Tensor
        out, [m, n].

    Raises
    ------
    TypeError, ValueError
        Bad input, before any launch. ArchError (a ValueError) on a GPU without W4A8 kernels.

    Examples
    --------
    >>> import torch, flashinfer_sm12x as fs
    >>> x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> w = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> a, a_sf = fs.mxfp8_quantize(x)  # float8_e4m3fn [16, 4096], E8M0 scales (128x4)  # doctest: +SKIP
    >>> b, b_sf = fs.mxfp4_quantize(w)  # doctest: +SKIP
    >>> y = fs.mm_mxfp8_mxfp4(a, b.T, a_sf, b_sf.T)  # [16, 8192] bf16  # doctest: +SKIP
    """
    p = validate(a, b, a_descale, b_descale, alpha, out_dtype, out, 32, False, False, fp8_a=True)
    if p.m == 0:  # an empty batch: the empty result, no plan, no launch
        return p.out
    return run(p, plan(p), enable_pdl)
