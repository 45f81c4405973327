# SPDX-License-Identifier: Apache-2.0
"""Scale-factor layouts against the per-element offset formulas, written out here independently."""

from __future__ import annotations

import itertools

import pytest
import torch

from flashinfer_sm12x.formats import SfLayout, as_sf_layout, swizzle_sf, swizzled_sf_size, unswizzle_sf


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _offset_128x4(b: int, m: int, kb: int, big_m: int, big_kb: int) -> int:
    n_mt, n_kt = _cdiv(big_m, 128), _cdiv(big_kb, 4)
    return (
        b * n_mt * n_kt * 512
        + (m // 128) * n_kt * 512
        + (kb // 4) * 512
        + (m % 32) * 16
        + ((m % 128) // 32) * 4
        + (kb % 4)
    )


def _offset_8x4(b: int, m: int, kb: int, big_m: int, big_kb: int) -> int:
    n_mt, n_kt = _cdiv(big_m, 8), _cdiv(big_kb, 4)
    return b * n_mt * n_kt * 32 + (m // 8) * n_kt * 32 + (kb // 4) * 32 + (m % 8) * 4 + kb % 4


def _scalar_swizzle(sf: torch.Tensor, layout: SfLayout) -> list[int]:
    bsz, big_m, big_kb = sf.shape
    rows, off = (128, _offset_128x4) if layout == SfLayout.layout_128x4 else (8, _offset_8x4)
    total = bsz * _cdiv(big_m, rows) * rows * _cdiv(big_kb, 4) * 4
    out = [0] * total
    vals = sf.tolist()
    for b, m, kb in itertools.product(range(bsz), range(big_m), range(big_kb)):
        out[off(b, m, kb, big_m, big_kb)] = vals[b][m][kb]
    return out


SHAPES = [(1, 1), (7, 3), (130, 5), (300, 90), (1, 90), (128, 4), (129, 1), (8, 4), (9, 7)]


# batch 3 only on the smaller shapes, to keep the scalar loop short
CASES = [(m, kb, b) for (m, kb) in SHAPES for b in (1, 3) if b == 1 or m * kb <= 3000]


@pytest.mark.parametrize("layout", [SfLayout.layout_128x4, SfLayout.layout_8x4])
@pytest.mark.parametrize(("m", "kb", "batch"), CASES)
def test_swizzle_matches_scalar_formula(layout: SfLayout, m: int, kb: int, batch: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + kb)
    sf = torch.randint(1, 256, (batch, m, kb), generator=g, dtype=torch.uint8)  # nonzero: padding shows
    got = swizzle_sf(sf if batch > 1 else sf[0], layout)
    want = _scalar_swizzle(sf, layout)
    assert got.dim() == 1 and got.dtype == torch.uint8
    assert got.tolist() == want  # includes: every padding byte is zero
    assert got.numel() == batch * swizzled_sf_size(m, kb, layout)
    back = unswizzle_sf(got, m, kb, layout)
    assert torch.equal(back, sf if batch > 1 else sf[0])


@pytest.mark.parametrize("layout", list(SfLayout))
def test_round_trip_all_layouts_and_padding_count(layout: SfLayout) -> None:
    g = torch.Generator().manual_seed(5)
    for m, kb in [(1, 1), (300, 90), (257, 13)]:
        sf = torch.randint(1, 256, (m, kb), generator=g, dtype=torch.uint8)
        flat = swizzle_sf(sf, layout)
        assert int((flat == 0).sum()) == flat.numel() - m * kb
        assert torch.equal(unswizzle_sf(flat, m, kb, layout), sf)
        # a 2-D view of the buffer (as the quantizers return it) unswizzles the same way
        cols = kb if layout == SfLayout.layout_linear else -(-kb // 4) * 4
        assert torch.equal(unswizzle_sf(flat.reshape(-1, cols), m, kb, layout), sf)


def test_linear_layout_is_row_major() -> None:
    sf = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    assert swizzle_sf(sf, "linear").tolist() == list(range(12))
    assert swizzled_sf_size(3, 4, SfLayout.layout_linear) == 12


def test_sizes() -> None:
    assert swizzled_sf_size(300, 90) == 384 * 92
    assert swizzled_sf_size(300, 90, "8x4") == 304 * 92
    assert swizzled_sf_size(1, 1, 0) == 128 * 4


def test_swizzle_keeps_dtype() -> None:
    sf = torch.randn(130, 5).to(torch.bfloat16)
    out = swizzle_sf(sf)
    assert out.dtype == torch.bfloat16
    assert torch.equal(unswizzle_sf(out, 130, 5), sf)


def test_layout_names() -> None:
    assert as_sf_layout("128x4") == SfLayout.layout_128x4
    assert as_sf_layout("layout_8x4") == SfLayout.layout_8x4
    assert as_sf_layout(2) == SfLayout.layout_linear
    with pytest.raises(ValueError):
        as_sf_layout("64x4")
    with pytest.raises(ValueError):
        as_sf_layout(7)


def test_unswizzle_rejects_wrong_size() -> None:
    with pytest.raises(ValueError):
        unswizzle_sf(torch.zeros(100, dtype=torch.uint8), 130, 5)
    with pytest.raises(ValueError):
        swizzle_sf(torch.zeros(5, dtype=torch.uint8))
