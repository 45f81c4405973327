# SPDX-License-Identifier: Apache-2.0
"""E2M1 (FP4) element codec: 4-bit codes, sign in bit 3, magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}.

Rules (shared by every quantizer in this package):
- rounding is round-to-nearest-even on the code (ties go to the even code: 0.25 -> 0, 0.75 -> 1, ...);
- satfinite: |x| > 6, including +-inf, encodes as +-6;
- NaN encodes as +6 (code 0x7), whatever its sign bit. This is what CUDA's own conversion does
  (cuda_fp4.hpp: "NaN converts to positive FP4_MAXNORM"); E2M1 has no NaN to carry it;
- the sign is kept for zero: -0.0 and negatives that round to zero encode as 0x8.
"""

from __future__ import annotations

import torch

_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Midpoints between consecutive magnitudes. A value exactly on a midpoint rounds up only when the
# upper neighbour has the even code (codes 2, 4, 6, i.e. midpoints .75, 1.75, 3.5).
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_TIES_ROUNDING_UP = (0.75, 1.75, 3.5)

_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def _const(name: str, values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (name, device, dtype)
    t = _cache.get(key)
    if t is None:
        t = torch.tensor(values, dtype=dtype, device=device)
        _cache[key] = t
    return t


def _check_float(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point tensor, got {x.dtype}")


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round `x` to the E2M1 grid (RNE, satfinite, NaN -> 0x7) and return uint8 codes 0..15."""
    _check_float(x, "e2m1_encode")
    # fp16/bf16 widen exactly to fp32; fp32/fp64 are compared as they are (the midpoints are exact
    # in every float type, so the comparisons never round).
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    ax = xf.abs()
    mid = _const("mid", _MIDPOINTS, xf.device, xf.dtype)
    # right=False counts the midpoints strictly below |x|: a tie stays on the lower code ...
    mag = torch.bucketize(ax, mid, right=False)
    # ... except on the three midpoints whose upper neighbour is the even code.
    ties_up = torch.isin(ax, _const("tie", _TIES_ROUNDING_UP, xf.device, xf.dtype))
    mag = (mag + ties_up.to(mag.dtype)).to(torch.uint8)
    # bucketize places NaN past the last boundary (code 7) on some builds and not on others: pin it.
    nan = torch.isnan(xf)
    mag = torch.where(nan, torch.full_like(mag, 7), mag)
    sign = (torch.signbit(xf) & ~nan).to(torch.uint8) << 3
    return mag | sign


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """Decode E2M1 codes (low 4 bits of each uint8) to float32."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"e2m1_decode: expected uint8 codes, got {codes.dtype}")
    lut = _const("lut", _E2M1_GRID + tuple(-v for v in _E2M1_GRID), codes.device, torch.float32)
    return lut[(codes & 0xF).long()]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes [..., K] into bytes [..., K/2]: element 2i in the low nibble, 2i+1 in the high one.

    Only the low 4 bits of each code are used.
    """
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_e2m1: expected uint8 codes, got {codes.dtype}")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_e2m1: the last dimension must be even, got shape {tuple(codes.shape)}")
    lo = codes[..., 0::2] & 0xF
    hi = codes[..., 1::2] & 0xF
    return lo | (hi << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_e2m1`: bytes [..., K/2] -> codes [..., K]."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_e2m1: expected uint8, got {packed.dtype}")
    if packed.dim() == 0:
        raise ValueError("unpack_e2m1: expected at least one dimension")
    pairs = torch.stack((packed & 0xF, packed >> 4), dim=-1)
    return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
