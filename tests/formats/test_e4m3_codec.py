# SPDX-License-Identifier: Apache-2.0
"""E4M3 codec against ml_dtypes and torch's float8_e4m3fn, plus every rounding tie."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from flashinfer_sm12x.formats import e4m3_decode, e4m3_encode

E4 = ml_dtypes.float8_e4m3fn


def _bits(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).view(np.uint32)


def test_all_256_codes_decode_like_ml_dtypes_and_torch() -> None:
    codes = np.arange(256, dtype=np.uint8)
    ours = e4m3_decode(torch.from_numpy(codes)).numpy()
    ref = codes.view(E4).astype(np.float32)
    via_torch = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()
    nan = np.isnan(ref)
    assert nan.tolist() == np.isnan(ours).tolist() == np.isnan(via_torch).tolist()
    assert sorted(np.flatnonzero(nan).tolist()) == [0x7F, 0xFF]
    assert (_bits(ours[~nan]) == _bits(ref[~nan])).all()
    assert (_bits(via_torch[~nan]) == _bits(ref[~nan])).all()


def test_decode_accepts_float8_tensor() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    a, b = e4m3_decode(codes), e4m3_decode(codes.view(torch.float8_e4m3fn))
    assert torch.equal(torch.nan_to_num(a, nan=1234.0), torch.nan_to_num(b, nan=1234.0))


def test_round_trip_all_finite_codes() -> None:
    codes = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)
    assert torch.equal(e4m3_encode(e4m3_decode(codes)), codes)


def test_every_tie_goes_to_even_code() -> None:
    pos = e4m3_decode(torch.arange(0, 0x7F, dtype=torch.uint8)).double()  # 0 .. 448, ascending
    mid = ((pos[:-1] + pos[1:]) / 2).float()  # exact: midpoints need one extra bit
    assert torch.equal(mid.double(), (pos[:-1] + pos[1:]) / 2)
    got = e4m3_encode(torch.cat([mid, -mid])).int()
    lower = torch.arange(0, 0x7E, dtype=torch.int32)
    want = torch.where(lower % 2 == 0, lower, lower + 1)
    assert torch.equal(got, torch.cat([want, want | 0x80]))
    # next to each tie: strictly nearest
    up = torch.nextafter(mid, torch.full_like(mid, 1e9))
    down = torch.nextafter(mid, torch.zeros_like(mid))
    assert torch.equal(e4m3_encode(up).int(), lower + 1)
    assert torch.equal(e4m3_encode(down).int(), lower)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_random_values_match_ml_dtypes_in_range(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    mag = torch.exp2(torch.rand(30000, generator=g) * 22 - 13)  # 2^-13 .. 2^9
    sign = torch.where(torch.rand(30000, generator=g) < 0.5, -1.0, 1.0)
    x = (mag * sign).to(dtype)
    x = x[x.float().abs() <= 448]  # ml_dtypes does not saturate; saturation is tested below
    ours = e4m3_encode(x).numpy()
    ref = x.float().numpy().astype(E4).view(np.uint8)
    assert (ours == ref).all()
    # torch's cast agrees in range as well
    assert torch.equal(torch.from_numpy(ours), x.float().to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize("value", [448.0, 449.0, 464.0, 470.0, 480.0, 1e6, 3e38, float("inf")])
def test_saturation(value: float) -> None:
    assert e4m3_encode(torch.tensor([value, -value])).tolist() == [0x7E, 0xFE]


def test_nan_and_signed_zero() -> None:
    nan = torch.tensor([float("nan")])
    assert e4m3_encode(torch.cat([nan, -nan])).tolist() == [0x7F, 0x7F]
    x = torch.tensor([0.0, -0.0, 2.0**-10, -(2.0**-10), 2.0**-11, 1e-45])
    assert e4m3_encode(x).tolist() == [0x00, 0x80, 0x00, 0x80, 0x00, 0x00]


def test_subnormals() -> None:
    k = torch.arange(0, 8)
    x = k * 2.0**-9
    assert e4m3_encode(x).tolist() == list(range(8))
    assert e4m3_encode(torch.tensor([2.0**-6, 1.5 * 2.0**-9])).tolist() == [0x08, 0x02]


def test_float64_input() -> None:
    x = torch.tensor([1.0 + 1.0 / 16 + 2.0**-40], dtype=torch.float64)  # just above the 1 / 1.125 tie
    assert e4m3_encode(x).item() == 0x39


def test_rejects_non_float() -> None:
    with pytest.raises(TypeError):
        e4m3_encode(torch.tensor([1]))
    with pytest.raises(TypeError):
        e4m3_decode(torch.tensor([1.0]))
