# SPDX-License-Identifier: Apache-2.0
"""E2M1 codec against ml_dtypes (an independent implementation) and hand-written rounding cases."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from flashinfer_sm12x.formats import e2m1_decode, e2m1_encode, pack_e2m1, unpack_e2m1

F4 = ml_dtypes.float4_e2m1fn


def _ml_decode(codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.uint8).view(F4).astype(np.float32)


def _ml_encode(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(F4).view(np.uint8)


def test_all_16_codes_decode_like_ml_dtypes() -> None:
    codes = np.arange(16, dtype=np.uint8)
    ours = e2m1_decode(torch.from_numpy(codes)).numpy()
    ref = _ml_decode(codes)
    # compare bit patterns so -0.0 (code 8) is checked too
    assert (ours.view(np.uint32) == ref.view(np.uint32)).all()


def test_decode_uses_low_nibble_only() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(e2m1_decode(codes), e2m1_decode(codes & 0xF))


def test_encode_decode_round_trip_all_codes() -> None:
    codes = torch.arange(16, dtype=torch.uint8)
    assert torch.equal(e2m1_encode(e2m1_decode(codes)), codes)


TIES = [(0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6)]


@pytest.mark.parametrize(("value", "code"), TIES)
def test_ties_go_to_even_code(value: float, code: int) -> None:
    got = e2m1_encode(torch.tensor([value, -value]))
    assert got.tolist() == [code, code | 8]


def test_ml_dtypes_is_rne_on_the_same_ties() -> None:
    # the random comparison below relies on ml_dtypes rounding ties to even as well
    vals = np.array([v for v, _ in TIES], dtype=np.float32)
    assert _ml_encode(vals).tolist() == [c for _, c in TIES]


@pytest.mark.parametrize(("value", "_code"), TIES)
def test_values_next_to_ties(value: float, _code: int) -> None:
    t = torch.tensor([value], dtype=torch.float32)
    below = torch.nextafter(t, torch.tensor([0.0]))
    above = torch.nextafter(t, torch.tensor([10.0]))
    lo = e2m1_decode(e2m1_encode(below)).item()
    hi = e2m1_decode(e2m1_encode(above)).item()
    assert lo < value < hi  # just below rounds down, just above rounds up
    assert hi - lo in (0.5, 1.0, 2.0)  # neighbours on the grid


@pytest.mark.parametrize("value", [6.0, 6.0001, 7.0, 100.0, 3.0e38, float("inf")])
def test_saturation_to_six(value: float) -> None:
    assert e2m1_encode(torch.tensor([value, -value])).tolist() == [0x7, 0xF]


def test_nan_encodes_as_plus_six_whatever_the_sign() -> None:
    nan = torch.tensor([float("nan")])
    neg_nan = -nan
    assert torch.signbit(neg_nan).item()
    assert e2m1_encode(torch.cat([nan, neg_nan])).tolist() == [0x7, 0x7]


def test_signed_zero() -> None:
    x = torch.tensor([0.0, -0.0, -0.1, 0.1, -0.25, 1e-30, -1e-45])
    assert e2m1_encode(x).tolist() == [0x0, 0x8, 0x8, 0x0, 0x8, 0x0, 0x8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_random_values_match_ml_dtypes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(20000, generator=g) * 14 - 7).to(dtype)  # covers the range and a bit past 6
    # plus every multiple of 1/8 in range: hits each tie and exact value exactly
    x = torch.cat([x, (torch.arange(-56, 57) / 8).to(dtype)])
    ours = e2m1_encode(x).numpy()
    ref = _ml_encode(x.float().numpy())  # exact widening; ml_dtypes saturates like us
    assert (ours == ref).all()


def test_float64_input_is_not_double_rounded() -> None:
    # 0.25 + 2^-40 is above the tie in float64 but would round to the tie in float32
    assert e2m1_encode(torch.tensor([0.25 + 2.0**-40], dtype=torch.float64)).item() == 1


def test_encode_rejects_non_float() -> None:
    with pytest.raises(TypeError):
        e2m1_encode(torch.tensor([1, 2]))
    with pytest.raises(TypeError):
        e2m1_decode(torch.tensor([1.0]))


def test_pack_order_hand_built() -> None:
    codes = torch.tensor([[0x1, 0x2, 0x3, 0xF], [0xA, 0x0, 0x7, 0x8]], dtype=torch.uint8)
    packed = pack_e2m1(codes)
    assert packed.tolist() == [[0x21, 0xF3], [0x0A, 0x87]]
    assert torch.equal(unpack_e2m1(packed), codes)


def test_pack_unpack_round_trip_random() -> None:
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (3, 5, 64), generator=g, dtype=torch.uint8)
    packed = pack_e2m1(codes)
    assert packed.shape == (3, 5, 32)
    assert torch.equal(unpack_e2m1(packed), codes)
    bytes_ = torch.randint(0, 256, (7, 9), generator=g, dtype=torch.uint8)
    assert torch.equal(pack_e2m1(unpack_e2m1(bytes_)), bytes_)


def test_pack_validation() -> None:
    with pytest.raises(ValueError):
        pack_e2m1(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError):
        pack_e2m1(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(TypeError):
        unpack_e2m1(torch.zeros(4, dtype=torch.int8))
