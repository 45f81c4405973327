# SPDX-License-Identifier: Apache-2.0
"""E8M0 (UE8M0) block scales: a byte e stands for 2^(e-127); 0xFF is NaN.

`e8m0_from_amax` picks a block's scale from its absolute maximum. All exponent arithmetic is exact
(frexp + integer compare), so no float log2 rounding can move a scale across a power of two.

Rules:
- "rceil" (NVIDIA / FlashInfer / TRT-LLM default): the smallest power of two >= amax / elem_max,
  the same as `__nv_cvt_float_to_e8m0(amax / elem_max, satfinite, round-up)`;
- "floor" (OCP MX spec): 2^(floor(log2 amax) - floor(log2 elem_max)); elements may then exceed
  elem_max and saturate;
- exponents are clamped to [-127, 127] (codes 0..254): a tiny amax gets code 0 (2^-127);
- amax == 0 gives code 0, the same as FlashInfer: every element of the block then encodes to 0;
- NaN or +-inf amax gives 0xFF (a NaN scale), so the whole block decodes to NaN. FlashInfer's
  kernels differ here (their max ignores NaN and an inf saturates to 0xFE).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Recipe = Literal["rceil", "floor"]
RECIPES: tuple[str, ...] = ("rceil", "floor")
E8M0_NAN = 0xFF
E8M0_BIAS = 127


def exact_pow2(n: torch.Tensor) -> torch.Tensor:
    """2.0**n as float32 for integer n in [-149, 127], built from bits (exact on every device)."""
    n = n.to(torch.int32)
    normal = (n + 127).clamp(min=0) << 23
    # Subnormals: 2^n = 2^-149 * 2^(n+149), i.e. a single mantissa bit.
    sub = torch.ones_like(n) << (n + 149).clamp(min=0, max=22)
    return torch.where(n >= -126, normal, sub).view(torch.float32)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """E8M0 codes (uint8) -> float32 scales 2^(e-127); 0xFF -> NaN; code 0 -> 2^-127 (subnormal)."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"e8m0_decode: expected uint8 codes, got {codes.dtype}")
    e = codes.to(torch.int32)
    scale = exact_pow2(e - E8M0_BIAS)
    return torch.where(e == E8M0_NAN, torch.full_like(scale, float("nan")), scale)


def e8m0_inverse(codes: torch.Tensor) -> torch.Tensor:
    """1 / scale as float32 (exact: 2^(127-e)); NaN for 0xFF. Used to scale a block before rounding."""
    e = codes.to(torch.int32)
    inv = exact_pow2(E8M0_BIAS - e.clamp(max=254))
    return torch.where(e == E8M0_NAN, torch.full_like(inv, float("nan")), inv)


def e8m0_from_amax(amax: torch.Tensor, recipe: Recipe = "rceil", *, elem_max: float = 6.0) -> torch.Tensor:
    """Scale codes (uint8) for blocks with absolute maxima `amax` (see the module doc for the rules).

    `elem_max` is the element format's largest finite magnitude: 6 for E2M1 (MXFP4), 448 for E4M3
    (MXFP8). The sign of `amax` is ignored.
    """
    if recipe not in RECIPES:
        raise ValueError(f"e8m0_from_amax: recipe must be one of {RECIPES}, got {recipe!r}")
    if not isinstance(amax, torch.Tensor) or not amax.is_floating_point():
        raise TypeError("e8m0_from_amax: amax must be a floating-point tensor")
    if not (elem_max > 0 and math.isfinite(elem_max)):
        raise ValueError(f"e8m0_from_amax: elem_max must be positive and finite, got {elem_max}")
    a = amax.abs()
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()
    # amax = m * 2^e with m in [0.5, 1); elem_max = fm * 2^fe likewise.
    m, e = torch.frexp(a)
    fm, fe = math.frexp(elem_max)
    k = e - fe  # floor: floor(log2 amax) - floor(log2 elem_max)
    if recipe == "rceil":
        # elem_max * 2^k >= amax  <=>  fm * 2^(k+fe) >= m * 2^e: k = e - fe works iff m <= fm.
        k = k + (m > fm).to(k.dtype)
    code = (k + E8M0_BIAS).clamp(0, 254)
    code = torch.where(a == 0, torch.zeros_like(code), code)
    code = torch.where(torch.isfinite(a), code, torch.full_like(code, E8M0_NAN))
    return code.to(torch.uint8)
