# SPDX-License-Identifier: Apache-2.0
"""E4M3 (float8_e4m3fn) codec with the rounding the quantizers need, written out in integer steps.

Rules: round-to-nearest-even; satfinite (|x| > 448, including +-inf, encodes as +-448, which is
what `cvt.rn.satfinite.e4m3x2.f32` does; torch's own cast turns values >= 480 into NaN instead);
NaN -> 0x7F whatever its sign; -0.0 -> 0x80. Subnormals (multiples of 2^-9 below 2^-6) are kept.
"""

from __future__ import annotations

import torch

from .e8m0 import exact_pow2

E4M3_MAX = 448.0
E4M3_NAN = 0x7F

_lut_cache: dict[torch.device, torch.Tensor] = {}


def _decode_lut(device: torch.device) -> torch.Tensor:
    lut = _lut_cache.get(device)
    if lut is None:
        vals = []
        for code in range(256):
            exp, man = (code >> 3) & 0xF, code & 0x7
            if exp == 0xF and man == 0x7:
                v = float("nan")
            elif exp == 0:
                v = man * 2.0**-9
            else:
                v = (1.0 + man / 8.0) * 2.0 ** (exp - 7)
            vals.append(-v if code & 0x80 else v)
        lut = torch.tensor(vals, dtype=torch.float32, device=device)
        _lut_cache[device] = lut
    return lut


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """Round `x` to E4M3 (RNE, satfinite +-448, NaN -> 0x7F) and return the uint8 bit patterns."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("e4m3_encode: expected a floating-point tensor")
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    ax = xf.abs().clamp(max=E4M3_MAX)  # NaN stays NaN
    _, e = torch.frexp(ax)  # ax = m * 2^e, m in [0.5, 1)
    # Spacing of E4M3 values around ax: 2^(e-4) in a normal binade (3 mantissa bits below the
    # leading one), 2^-9 in the subnormal range and in the lowest binade [2^-6, 2^-5).
    q = (e - 4).clamp(min=-9)
    q = torch.where(ax == 0, torch.full_like(q, -9), q)  # frexp(0) reports e = 0
    # Scaling by a power of two is exact here (ax <= 448, q >= -9); round() is half-to-even.
    n = torch.round(ax * exact_pow2(-q).to(ax.dtype))
    n = torch.nan_to_num(n, nan=0.0).to(torch.int32)  # n in [0, 16]; NaN is patched below
    # value = n * 2^q with n in [8, 16] (or any n when q == -9) has code (q + 9) * 8 + n: the
    # exponent field is q + 10 for n < 16 and n == 16 carries into the next binade by itself.
    code = ((q + 9) * 8 + n).to(torch.uint8)
    nan = torch.isnan(xf)
    sign = (torch.signbit(xf) & ~nan).to(torch.uint8) << 7
    code = code | sign
    return torch.where(nan, torch.full_like(code, E4M3_NAN), code)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    """E4M3 bit patterns (uint8, or a float8_e4m3fn tensor) -> float32; 0x7F / 0xFF -> NaN."""
    if codes.dtype == torch.float8_e4m3fn:
        codes = codes.view(torch.uint8)
    if codes.dtype != torch.uint8:
        raise TypeError(f"e4m3_decode: expected uint8 or float8_e4m3fn, got {codes.dtype}")
    return _decode_lut(codes.device)[codes.long()]
