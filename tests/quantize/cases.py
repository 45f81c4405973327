# SPDX-License-Identifier: Apache-2.0
"""Input generators shared by the quantizer tests: random rows with per-row exponents, blocks that pin the scale
and hold every element code, midpoint (tie) and float32 neighbour, and rows of special values."""

from __future__ import annotations

import math

import torch

from flashinfer_sm12x.formats import e4m3_decode

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def rand_rows(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Normal values with a random power-of-two magnitude per row (2^-12 .. 2^11)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-12, 12, shape[:-1] + (1,), generator=g))
    return x.to(dtype)


def blocks_with_amax(values: list[float], amax: float, block: int) -> torch.Tensor:
    """Rows of `block` elements: the first holds `amax` (pinning the scale), the others `values` in order."""
    per = block - 1
    n = math.ceil(len(values) / per)
    padded = values + [0.0] * (n * per - len(values))
    body = torch.tensor(padded, dtype=torch.float64).reshape(n, per)
    return torch.cat([torch.full((n, 1), amax, dtype=torch.float64), body], dim=1).to(torch.float32)


def around(values: list[float]) -> list[float]:
    """Each value, its float32 neighbours, and the negatives of all of them."""
    x = torch.tensor(values, dtype=torch.float32)
    up = torch.nextafter(x, torch.tensor(float("inf")))
    down = torch.nextafter(x, torch.tensor(0.0))
    out = torch.cat([x, up, down])
    return torch.cat([out, -out]).tolist()


def e2m1_cases() -> list[float]:
    """Every E2M1 magnitude and midpoint, their float32 neighbours, both signs (in units of the block scale)."""
    mids = [(a + b) / 2 for a, b in zip(E2M1_GRID, E2M1_GRID[1:], strict=False)]
    return around(list(E2M1_GRID) + mids)


def e4m3_cases() -> list[float]:
    """Every finite E4M3 magnitude and midpoint, their float32 neighbours, both signs."""
    vals = e4m3_decode(torch.arange(0, 0x7F, dtype=torch.uint8)).tolist()  # every finite magnitude
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:], strict=False)]
    return around(vals + mids)


def special_rows() -> torch.Tensor:
    """Blocks of zeros, -0, NaN of both signs, +-inf, float32 subnormals, tiny and huge maxima (64 columns)."""
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(12, 64, generator=g) * 3
    a[0] = 0.0  # zero blocks
    a[1] = -0.0  # negative zeros keep their sign
    a[2, 3] = float("nan")
    a[3, 40] = -float("nan")
    a[4, 0] = float("inf")
    a[5, 63] = -float("inf")
    a[6] = torch.tensor(1e-40).expand(64) * torch.randn(64, generator=g).sign()  # fp32 subnormals
    a[7, :32] = 2.0**-130
    a[7, 1] = -(2.0**-128)
    a[8] = 3e38 * torch.rand(64, generator=g)  # near the float32 maximum
    a[9, :16] = torch.tensor([2.0**-149] * 16)  # the smallest subnormal
    a[10] = -1e-30
    a[11, 17] = 65504.0
    return a
