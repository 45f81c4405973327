# SPDX-License-Identifier: Apache-2.0
"""E8M0 scales: exhaustive decode against ml_dtypes, scale selection against brute force."""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest
import torch

from flashinfer_sm12x.formats import e8m0_decode, e8m0_from_amax, e8m0_inverse, exact_pow2


def test_all_256_codes_decode_like_ml_dtypes() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ref = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    ours = e8m0_decode(torch.from_numpy(codes)).numpy()
    assert np.isnan(ours[255]) and np.isnan(ref[255])
    assert (ours[:255].view(np.uint32) == ref[:255].view(np.uint32)).all()


def test_inverse_is_exact_reciprocal() -> None:
    codes = torch.arange(255, dtype=torch.uint8)
    prod = e8m0_decode(codes).double() * e8m0_inverse(codes).double()
    assert torch.all(prod == 1.0)
    assert torch.isnan(e8m0_inverse(torch.tensor([255], dtype=torch.uint8))).all()


def test_exact_pow2_whole_range() -> None:
    n = torch.arange(-149, 128)
    ref = torch.tensor([math.ldexp(1.0, int(i)) for i in n], dtype=torch.float64).float()
    assert torch.equal(exact_pow2(n), ref)


def _brute_rceil(a: float, elem_max: float) -> int:
    if a == 0:
        return 0
    for k in range(-127, 128):  # smallest power of two with elem_max * 2^k >= a (exact in float64)
        if elem_max * 2.0**k >= a:
            return k + 127
    return 254


def _brute_floor(a: float, elem_max: float) -> int:
    if a == 0:
        return 0
    emax = math.floor(math.log2(elem_max))  # elem_max is 6 or 448: log2 is far from an integer
    j = max(j for j in range(-160, 129) if 2.0**j <= a)
    return min(max(j - emax + 127, 0), 254)


def _amax_samples() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    rand = torch.exp2(torch.rand(3000, generator=g) * 280 - 150)  # 2^-150 .. 2^130 (inf above max)
    edges = [6.0 * 2.0**k for k in range(-130, 127)] + [8.0 * 2.0**k for k in range(-130, 125)]
    edges += [448.0 * 2.0**k for k in range(-135, 119)]
    t = torch.cat([rand, torch.tensor(edges, dtype=torch.float32)])
    t = t[torch.isfinite(t)]
    up = torch.nextafter(t, torch.full_like(t, math.inf))
    down = torch.nextafter(t, torch.zeros_like(t))
    return torch.cat([t, up, down, torch.tensor([1e-45, 2.0**-126, 3.4e38])])


def _check_recipe(recipe: str, brute: Callable[[float, float], int], elem_max: float) -> None:
    """e8m0_from_amax under `recipe` equals the brute-force search on every finite sample."""
    a = _amax_samples()
    a = a[torch.isfinite(a)]
    ours = e8m0_from_amax(a, recipe, elem_max=elem_max).tolist()
    assert ours == [brute(float(v), elem_max) for v in a.tolist()]


@pytest.mark.parametrize("elem_max", [6.0, 448.0])
def test_rceil_matches_brute_force(elem_max: float) -> None:
    _check_recipe("rceil", _brute_rceil, elem_max)


@pytest.mark.parametrize("elem_max", [6.0, 448.0])
def test_floor_matches_brute_force(elem_max: float) -> None:
    _check_recipe("floor", _brute_floor, elem_max)


@pytest.mark.parametrize("k", [-20, -5, -1, 0, 1, 3, 40])
def test_recipes_differ_only_between_6_and_8_times_pow2(k: int) -> None:
    p = 2.0**k
    inside = torch.tensor([6.5 * p, 7.0 * p, 7.99 * p], dtype=torch.float32)
    six = torch.tensor([6.0 * p])
    inside = torch.cat([inside, torch.nextafter(six, six * 2)])
    outside = torch.tensor([4.0 * p, 5.0 * p, 6.0 * p, 8.0 * p, 9.0 * p, 11.9 * p])
    r_in, f_in = e8m0_from_amax(inside, "rceil"), e8m0_from_amax(inside, "floor")
    assert torch.all(r_in.int() == f_in.int() + 1)
    assert torch.all(f_in.int() == k + 127)
    assert torch.equal(e8m0_from_amax(outside, "rceil"), e8m0_from_amax(outside, "floor"))


def test_rceil_keeps_block_in_range() -> None:
    a = _amax_samples()
    a = a[(a > 2.0**-120) & (a < 2.0**120)]
    scale = e8m0_decode(e8m0_from_amax(a)).double()
    ratio = a.double() / scale
    assert torch.all(ratio <= 6.0) and torch.all(ratio > 3.0)


def test_zero_nan_inf_and_clamping() -> None:
    a = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3.4e38, -6.0])
    for recipe in ("rceil", "floor"):
        got = e8m0_from_amax(a, recipe).tolist()
        assert got[:6] == [0, 0, 255, 255, 255, 0]
        assert got[7] == 127  # the sign is ignored
    assert e8m0_from_amax(a, "rceil").tolist()[6] == 127 + 126


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_amax_dtypes(dtype: torch.dtype) -> None:
    a = torch.tensor([0.0, 6.0, 7.0, 0.001, 100.0]).to(dtype)
    assert torch.equal(e8m0_from_amax(a), e8m0_from_amax(a.float()))


def test_validation() -> None:
    with pytest.raises(ValueError):
        e8m0_from_amax(torch.tensor([1.0]), "nearest")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        e8m0_from_amax(torch.tensor([1]))
    with pytest.raises(ValueError):
        e8m0_from_amax(torch.tensor([1.0]), elem_max=0.0)
    with pytest.raises(TypeError):
        e8m0_decode(torch.tensor([1.0]))
