# SPDX-License-Identifier: Apache-2.0
"""NaN / Inf / denormal / +-0 / all-zero / saturating inputs through the quantizers' torch reference (bit-identical to
the CUDA kernels, tests/quantize), class by class, as docs/numerics.md states them; where FlashInfer differs the test
names the difference."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.formats import quantize as q
from flashinfer_sm12x.formats.e2m1 import unpack_e2m1
from flashinfer_sm12x.formats.scale_layout import SfLayout

LINEAR = SfLayout.layout_linear
E8M0_NAN, E4M3_NAN, E2M1_MAX, E4M3_MAX = 0xFF, 0x7F, 0x7, 0x7E


def _quantize(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(element codes [rows, K] uint8, scale codes [rows, K/block] uint8) in the linear layout."""
    if fmt == "mxfp4":
        data, sf = q.mxfp4_quantize(x, sfLayout=LINEAR)
        return unpack_e2m1(data), sf.reshape(x.shape[0], -1)
    if fmt == "mxfp8":
        data, sf = q.mxfp8_quantize(x, False, 32)
        return data.view(torch.uint8), sf.reshape(x.shape[0], -1)
    data, sf = q.nvfp4_quantize(x, 1.0, sfLayout=LINEAR)
    return unpack_e2m1(data), sf.reshape(x.shape[0], -1)


FORMATS = ["mxfp4", "mxfp8", "nvfp4"]
NAN_SCALE = {"mxfp4": E8M0_NAN, "mxfp8": E8M0_NAN, "nvfp4": E4M3_NAN}
NAN_ELEMENT = {"mxfp4": E2M1_MAX, "mxfp8": E4M3_NAN, "nvfp4": E2M1_MAX}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("special", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_poisons_its_block_only(fmt: str, special: float) -> None:
    # Ours: a NaN scale for the block (it decodes to NaN, so the block's products are NaN downstream). FlashInfer's
    # kernels differ: their block max ignores NaN, and +-inf saturates the E8M0 scale to 0xFE.
    x = torch.ones(2, 64)
    x[0, 0] = special
    codes, sf = _quantize(x, fmt)
    assert sf[0, 0] == NAN_SCALE[fmt]
    assert bool((codes[0, : 16 if fmt == "nvfp4" else 32] == NAN_ELEMENT[fmt]).all())
    assert sf[0, 1] != NAN_SCALE[fmt] and bool((sf[1] == sf[0, 1]).all())  # the next block and row are untouched
    assert torch.equal(codes[1], codes[0, 32:].repeat(2))


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_block_gives_zero_scale_and_zero_codes(fmt: str) -> None:
    codes, sf = _quantize(torch.zeros(1, 64), fmt)
    assert bool((sf == 0).all()) and bool((codes == 0).all())  # as FlashInfer: scale code 0, elements +0


@pytest.mark.parametrize("fmt", FORMATS)
def test_negative_zero_keeps_its_sign(fmt: str) -> None:
    codes, sf = _quantize(-torch.zeros(1, 64), fmt)
    sign = 0x80 if fmt == "mxfp8" else 0x8
    assert bool((sf == 0).all()) and bool((codes == sign).all())


@pytest.mark.parametrize("fmt", FORMATS)
def test_denormal_inputs(fmt: str) -> None:
    # float32 denormals: the block's scale is the smallest (E8M0 2^-127 / E4M3 0); FP4 elements flush to zero,
    # MXFP8 keeps them as E4M3 subnormals of the 2^-127 scale (1e-40 * 2^127 = 0.017 -> code 9, 9 * 2^-9).
    codes, sf = _quantize(torch.full((1, 64), 1e-40), fmt)
    assert bool((sf == 0).all())
    assert bool((codes == (9 if fmt == "mxfp8" else 0)).all())


@pytest.mark.parametrize("fmt", FORMATS)
def test_outlier_saturates_the_rest_of_its_block_to_zero(fmt: str) -> None:
    # One value 1e30 in a block of ones: the scale follows the outlier, the ones underflow to 0; no error, no NaN.
    x = torch.ones(1, 64)
    x[0, 0] = 1e30
    codes, sf = _quantize(x, fmt)
    assert sf[0, 0] not in (0, NAN_SCALE[fmt])
    assert codes[0, 0] in (E2M1_MAX, E4M3_MAX, 5, 125)  # the outlier lands on the format's top codes
    assert bool((codes[0, 1:16] == 0).all())


@pytest.mark.parametrize("fmt", FORMATS)
def test_float32_max_gets_finite_scales(fmt: str) -> None:
    codes, sf = _quantize(torch.full((1, 64), 3e38), fmt)
    assert not bool((sf == NAN_SCALE[fmt]).any())


def test_mxfp4_near_float32_max_rounds_up_to_inf_when_dequantized() -> None:
    # 3e38: rceil gives the scale 2^126 (code 253), 3e38 / 2^126 = 3.5 rounds (to even) to the E2M1 value 4, and
    # 4 * 2^126 = 2^128 is past float32's range: the dequantized value (and a GEMM product of it) is inf. FlashInfer's
    # rule (rceil scale, round-to-nearest-even elements) gives the same codes. Values below about 2^127.6 stay finite.
    codes, sf = _quantize(torch.full((1, 64), 3e38), "mxfp4")
    assert bool((sf == 253).all()) and bool((codes == 6).all())
    assert bool(torch.isinf(q.mxfp4_dequantize(*q.mxfp4_quantize(torch.full((1, 64), 3e38)))).all())
    assert bool(torch.isfinite(q.mxfp4_dequantize(*q.mxfp4_quantize(torch.full((1, 64), 2e38)))).all())
