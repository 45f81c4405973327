# SPDX-License-Identifier: Apache-2.0
"""Quantizers: shapes, packing order, error bounds, special blocks, and an independent numpy/ml_dtypes
re-implementation of each recipe compared bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from flashinfer_sm12x.formats import (
    SfLayout,
    e4m3_decode,
    e8m0_decode,
    mxfp4_dequantize,
    mxfp4_quantize,
    mxfp8_dequantize,
    mxfp8_quantize,
    nvfp4_dequantize,
    nvfp4_quantize,
    unpack_e2m1,
    unswizzle_sf,
)

LAYOUTS = [SfLayout.layout_128x4, SfLayout.layout_8x4, SfLayout.layout_linear]


def _rand(shape: tuple[int, ...], dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-8, 8, shape[:-1] + (1,), generator=g))
    return x.to(dtype)


def _rows_sf(sf: torch.Tensor, rows: int, kb: int, layout: SfLayout) -> torch.Tensor:
    return unswizzle_sf(sf, rows, kb, layout).reshape(rows, kb)


# ------------------------------------------------------------ independent numpy references
def _np_e8m0_rceil(amax: np.ndarray, elem_max: float) -> np.ndarray:
    out = np.zeros(amax.shape, dtype=np.int64)
    for idx, a in np.ndenumerate(amax.astype(np.float64)):
        if a == 0:
            continue
        k = -127
        while elem_max * 2.0**k < a:
            k += 1
        out[idx] = min(k + 127, 254)
    return out


def _np_mx(x: torch.Tensor, block: int, elem_max: float, elem_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    xf = x.float().numpy().reshape(-1, x.shape[-1] // block, block).astype(np.float64)
    codes = _np_e8m0_rceil(np.abs(xf).max(axis=-1), elem_max)
    scaled = xf / np.exp2(codes - 127.0)[..., None]  # exact: power-of-two division in float64
    scaled = np.clip(scaled, -elem_max, elem_max)  # satfinite (ml_dtypes e4m3 does not saturate)
    elems = scaled.astype(np.float32).astype(elem_dtype).view(np.uint8)
    return elems.reshape(x.shape), codes.astype(np.uint8)


def _np_nvfp4(x: torch.Tensor, gs: float) -> tuple[np.ndarray, np.ndarray]:
    f32 = np.float32
    xf = x.float().numpy().reshape(-1, x.shape[-1] // 16, 16)
    amax = np.abs(xf).max(axis=-1)
    sf_f = f32(gs) * (amax * f32(1.0 / 6.0))  # float32 arithmetic, same association as FlashInfer
    sf_codes = sf_f.astype(ml_dtypes.float8_e4m3fn)
    sf_dec = sf_codes.astype(f32)
    with np.errstate(divide="ignore"):
        scale = np.minimum(f32(1.0) / (sf_dec * (f32(1.0) / f32(gs))), np.finfo(f32).max)
    scale = np.where(amax != 0, scale, f32(0.0)).astype(f32)
    elems = (xf * scale[..., None]).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    return elems.reshape(x.shape), sf_codes.view(np.uint8)


# ----------------------------------------------------------------------------------- MXFP4
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mxfp4_matches_numpy_reference(dtype: torch.dtype) -> None:
    a = _rand((77, 128), dtype, seed=1)
    x_q, sf = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    elems, codes = _np_mx(a, 32, 6.0, ml_dtypes.float4_e2m1fn)
    assert np.array_equal(unpack_e2m1(x_q).numpy(), elems)
    assert np.array_equal(sf.numpy(), codes)


@pytest.mark.parametrize(
    ("shape", "layout", "sf_shape"),
    [
        ((300, 64), SfLayout.layout_128x4, (384, 4)),
        ((300, 64), SfLayout.layout_8x4, (304, 4)),
        ((300, 64), SfLayout.layout_linear, (300, 2)),
        ((2, 150, 160), SfLayout.layout_128x4, (384, 8)),  # leading dims flatten into rows
        ((1, 32), SfLayout.layout_128x4, (128, 4)),
        ((5, 2880), SfLayout.layout_linear, (5, 90)),
    ],
)
def test_mxfp4_shapes(shape: tuple[int, ...], layout: SfLayout, sf_shape: tuple[int, int]) -> None:
    a = _rand(shape, seed=2)
    x_q, sf = mxfp4_quantize(a, sfLayout=layout)
    assert x_q.shape == (*shape[:-1], shape[-1] // 2) and x_q.dtype == torch.uint8
    assert tuple(sf.shape) == sf_shape and sf.dtype == torch.uint8


def test_mxfp4_layouts_hold_the_same_scales() -> None:
    a = _rand((130, 96), seed=3)
    ref_q, ref_sf = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    for layout in (SfLayout.layout_128x4, SfLayout.layout_8x4):
        x_q, sf = mxfp4_quantize(a, sfLayout=layout)
        assert torch.equal(x_q, ref_q)
        assert torch.equal(_rows_sf(sf, 130, 3, layout), ref_sf)


def test_mxfp4_hand_built_block_and_packing_order() -> None:
    row = torch.zeros(32)
    row[0], row[1], row[2], row[3], row[31] = 1.0, -6.0, 0.75, 5.0, -0.5  # amax 6 -> scale 2^0
    x_q, sf = mxfp4_quantize(row.reshape(1, 32), sfLayout=SfLayout.layout_linear)
    assert sf.tolist() == [[127]]
    # codes: 1.0 -> 2, -6 -> 0xF, 0.75 -> 2 (tie to even), 5.0 -> 6 (tie to even), -0.5 -> 0x9
    assert x_q[0, 0].item() == 0xF2  # element 0 in the low nibble
    assert x_q[0, 1].item() == 0x62
    assert x_q[0, 15].item() == 0x90
    assert x_q[0, 2:15].tolist() == [0] * 13
    # scaled by 2^-3: same codes, scale code 124
    x_q2, sf2 = mxfp4_quantize(row.reshape(1, 32) / 8, sfLayout=SfLayout.layout_linear)
    assert torch.equal(x_q2, x_q) and sf2.tolist() == [[124]]


@pytest.mark.parametrize("recipe", ["rceil", "floor"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mxfp4_error_bound(recipe: str, layout: SfLayout) -> None:
    a = _rand((200, 256), torch.float32, seed=4)
    x_q, sf = mxfp4_quantize(a, sfLayout=layout, recipe=recipe)
    deq = mxfp4_dequantize(x_q, sf, sfLayout=layout)
    assert deq.shape == a.shape and deq.dtype == torch.float32
    scale = e8m0_decode(_rows_sf(sf, 200, 8, layout)).repeat_interleave(32, dim=1)
    y = (a / scale).abs()  # element magnitude in units of the block scale
    half_ulp = torch.where(y < 2, 0.25, torch.where(y < 4, 0.5, 1.0))  # E2M1 spacing 0.5 / 1 / 2
    err = (a - deq).abs()
    in_range = y <= 6
    assert torch.all(err[in_range] <= (half_ulp * scale)[in_range])
    if recipe == "rceil":
        assert bool(in_range.all())  # rceil never needs to saturate
    else:
        assert torch.all(err[~in_range] <= (y[~in_range] - 6) * scale[~in_range])  # saturated to 6


def test_mxfp4_recipes_differ_where_expected() -> None:
    a = torch.zeros(2, 32)
    a[0, 0] = 7.0  # in (6, 8): rceil 2^1, floor 2^0 (7 saturates to 6)
    a[1, 0] = 5.0
    _, sf_r = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    q_f, sf_f = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear, recipe="floor")
    assert sf_r.flatten().tolist() == [128, 127] and sf_f.flatten().tolist() == [127, 127]
    assert q_f[0, 0].item() & 0xF == 0x7


def test_mxfp4_zero_nan_inf_blocks() -> None:
    a = _rand((4, 128), torch.float32, seed=5)
    a[0, 32:64] = 0.0
    a[1, 5] = float("nan")
    a[2, 70] = float("inf")
    a[3, 127] = -float("inf")
    x_q, sf = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    codes = unpack_e2m1(x_q)
    assert sf[0, 1].item() == 0 and torch.all(codes[0, 32:64] == 0)
    assert sf[1, 0].item() == 0xFF and sf[2, 2].item() == 0xFF and sf[3, 3].item() == 0xFF
    assert torch.all(codes[1, :32] == 0x7)  # NaN-scaled block: every element NaN-encoded
    deq = mxfp4_dequantize(x_q, sf, sfLayout=SfLayout.layout_linear)
    assert torch.all(deq[0, 32:64] == 0)
    assert torch.isnan(deq[1, :32]).all() and torch.isnan(deq[2, 64:96]).all()
    assert not torch.isnan(deq[1, 32:]).any()  # other blocks unaffected
    ref_q, ref_sf = mxfp4_quantize(a[:, 32:64].clone(), sfLayout=SfLayout.layout_linear)
    assert torch.equal(sf[1:, 1], ref_sf[1:, 0])


def test_mxfp4_tiny_block_uses_code_zero_and_keeps_values() -> None:
    a = torch.zeros(1, 32)
    a[0, 0] = 2.0**-130  # amax / 6 < 2^-127: scale clamps to 2^-127, element saturates
    a[0, 1] = 2.0**-128
    x_q, sf = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    assert sf.item() == 0
    assert unpack_e2m1(x_q)[0, :2].tolist() == [0x0, 0x1]  # 2^-130 -> 0.125 -> 0; 2^-128 -> 0.5


def test_mxfp4_column_major_input_follows_flashinfer() -> None:
    a = _rand((64, 96), seed=6)  # [K, N] contiguous; a.t() is column-major [N, K]
    x_q, sf = mxfp4_quantize(a.t())
    # FlashInfer quantizes a column-major matrix along its rows: same as quantizing `a` and transposing
    ref_q, ref_sf = mxfp4_quantize(a)
    assert torch.equal(x_q, ref_q.t()) and torch.equal(sf, ref_sf.t())


def test_mxfp4_dequantize_3d_and_flat_sf() -> None:
    a = _rand((3, 40, 64), seed=7)
    x_q, sf = mxfp4_quantize(a)
    deq = mxfp4_dequantize(x_q, sf.flatten())
    assert deq.shape == a.shape
    assert torch.equal(deq, mxfp4_dequantize(x_q.reshape(120, 32), sf).reshape(3, 40, 64))


def test_mxfp4_validation() -> None:
    with pytest.raises(TypeError):
        mxfp4_quantize(torch.zeros(2, 32, dtype=torch.float64))
    with pytest.raises(TypeError):
        mxfp4_quantize(torch.zeros(2, 32, dtype=torch.int32))
    with pytest.raises(ValueError):
        mxfp4_quantize(torch.zeros(2, 48))
    with pytest.raises(ValueError):
        mxfp4_quantize(torch.zeros(64))
    with pytest.raises(ValueError):
        mxfp4_quantize(torch.zeros(2, 32), backend="triton")
    with pytest.raises(ValueError):
        mxfp4_quantize(torch.zeros(2, 32), sfLayout=9)
    with pytest.raises(ValueError):
        mxfp4_quantize(torch.zeros(2, 32), recipe="nearest")  # type: ignore[arg-type]
    x_q, sf = mxfp4_quantize(torch.ones(2, 64))
    with pytest.raises(ValueError):
        mxfp4_dequantize(x_q, sf[:10])
    with pytest.raises(TypeError):
        mxfp4_dequantize(x_q.to(torch.int16), sf)


# ----------------------------------------------------------------------------------- MXFP8
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mxfp8_matches_numpy_reference(dtype: torch.dtype) -> None:
    a = _rand((50, 96), dtype, seed=8)
    x_q, sf = mxfp8_quantize(a, is_sf_swizzled_layout=False)
    elems, codes = _np_mx(a, 32, 448.0, ml_dtypes.float8_e4m3fn)
    assert x_q.dtype == torch.float8_e4m3fn
    assert np.array_equal(x_q.view(torch.uint8).numpy(), elems)
    assert np.array_equal(sf.numpy(), codes.reshape(-1))


@pytest.mark.parametrize(
    ("shape", "kwargs", "xq_shape", "sf_numel"),
    [
        ((300, 64), {}, (300, 64), 384 * 4),
        ((300, 64), {"is_sf_swizzled_layout": False}, (300, 64), 600),
        ((300, 64), {"sf_swizzle_layout": SfLayout.layout_8x4}, (300, 64), 304 * 4),
        ((300, 64), {"alignment": 128}, (300, 128), 384 * 4),
        ((2, 10, 160), {"is_sf_swizzled_layout": False, "alignment": 256}, (2, 10, 256), 20 * 8),
    ],
)
def test_mxfp8_shapes(shape: tuple[int, ...], kwargs: dict, xq_shape: tuple[int, ...], sf_numel: int) -> None:
    a = _rand(shape, seed=9)
    x_q, sf = mxfp8_quantize(a, **kwargs)
    assert tuple(x_q.shape) == xq_shape and sf.dim() == 1 and sf.numel() == sf_numel
    if xq_shape[-1] != shape[-1]:  # alignment padding holds zero data and zero scales
        assert torch.all(x_q[..., shape[-1] :].view(torch.uint8) == 0)
        lin, _ = mxfp8_quantize(a, is_sf_swizzled_layout=False)
        assert torch.equal(x_q[..., : shape[-1]].view(torch.uint8), lin.view(torch.uint8))


def test_mxfp8_error_bound_and_round_trip() -> None:
    a = _rand((100, 128), torch.float32, seed=10)
    x_q, sf = mxfp8_quantize(a)
    deq = mxfp8_dequantize(x_q, sf)
    scale = e8m0_decode(_rows_sf(sf, 100, 4, SfLayout.layout_128x4)).repeat_interleave(32, dim=1)
    y = (a / scale).abs()
    assert torch.all(y <= 448)
    # E4M3 spacing: 2^(floor(log2 y) - 3) for y >= 2^-6, 2^-9 below
    spacing = torch.exp2(torch.floor(torch.log2(y.clamp(min=2.0**-6))) - 3)
    assert torch.all((a - deq).abs() <= spacing / 2 * scale)
    assert torch.equal(mxfp8_dequantize(x_q.view(torch.uint8), sf), deq)


def test_mxfp8_nan_block_and_validation() -> None:
    a = torch.ones(2, 64)
    a[1, 40] = float("nan")
    x_q, sf = mxfp8_quantize(a, is_sf_swizzled_layout=False)
    assert sf.tolist() == [127 - 8, 127 - 8, 127 - 8, 255]  # amax 1 -> 2^-8 (448 * 2^-8 >= 1)
    assert torch.all(x_q[1, 32:].view(torch.uint8) == 0x7F)
    with pytest.raises(ValueError):
        mxfp8_quantize(torch.zeros(2, 48))
    with pytest.raises(ValueError):
        mxfp8_quantize(torch.zeros(2, 32), alignment=48)  # pads K to 48
    with pytest.raises(TypeError):
        mxfp8_dequantize(torch.zeros(2, 32), sf)


# ----------------------------------------------------------------------------------- NVFP4
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nvfp4_matches_numpy_reference(dtype: torch.dtype) -> None:
    a = _rand((64, 160), dtype, seed=11)
    gs = 448.0 * 6.0 / a.float().abs().max().item()
    x_q, sf = nvfp4_quantize(a, torch.tensor([gs]), sfLayout=SfLayout.layout_linear)
    elems, codes = _np_nvfp4(a, gs)
    assert np.array_equal(sf.numpy(), codes)
    assert np.array_equal(unpack_e2m1(x_q).numpy(), elems)


def test_nvfp4_shapes_error_bound_and_dequantize() -> None:
    a = _rand((300, 128), torch.float32, seed=12)
    gs = torch.tensor([448.0 * 6.0]) / a.abs().max()
    x_q, sf = nvfp4_quantize(a, gs)
    assert x_q.shape == (300, 64) and tuple(sf.shape) == (384, 8)
    deq = nvfp4_dequantize(x_q, sf, gs)
    sf_rows = e4m3_decode(_rows_sf(sf, 300, 8, SfLayout.layout_128x4))
    assert torch.all(sf_rows <= 448)
    amax_blk = a.abs().reshape(300, 8, 16).amax(-1).repeat_interleave(16, dim=1)
    # half an E2M1 spacing (at most 1) of the decoded scale, or the E4M3 rounding of the scale
    assert torch.all((a - deq).abs() <= 0.2 * amax_blk + 1e-30)


def test_nvfp4_hand_built_block() -> None:
    row = torch.zeros(1, 16)
    row[0, 0], row[0, 1], row[0, 15] = 6.0, -3.0, 0.25
    x_q, sf = nvfp4_quantize(row, torch.tensor([448.0]), sfLayout=SfLayout.layout_linear)
    assert sf.tolist() == [[0x7E]]  # 448 * 6 / 6 = 448 -> largest E4M3
    codes = unpack_e2m1(x_q)[0].tolist()
    assert codes[0] == 0x7 and codes[1] == 0xD and codes[15] == 0x0  # 0.25 ties to 0
    assert torch.equal(nvfp4_dequantize(x_q, sf, 448.0, sfLayout=SfLayout.layout_linear)[0, :2], row[0, :2])


def test_nvfp4_zero_nan_and_per_row_scale() -> None:
    a = _rand((3, 32), torch.float32, seed=13)
    a[0, :16] = 0
    a[1, 20] = float("nan")
    x_q, sf = nvfp4_quantize(a, torch.tensor([100.0]), sfLayout=SfLayout.layout_linear)
    assert sf[0, 0].item() == 0 and torch.all(unpack_e2m1(x_q)[0, :16] == 0)
    assert sf[1, 1].item() == 0x7F
    # one global scale per row equals quantizing the rows one by one
    gs = torch.tensor([50.0, 100.0, 200.0])
    x_r, sf_r = nvfp4_quantize(a, gs, sfLayout=SfLayout.layout_linear)
    for i in range(3):
        xi, si = nvfp4_quantize(a[i : i + 1], gs[i : i + 1], sfLayout=SfLayout.layout_linear)
        assert torch.equal(x_r[i], xi[0]) and torch.equal(sf_r[i], si[0])


def test_nvfp4_unsupported_arguments() -> None:
    a, gs = torch.ones(2, 32), torch.tensor([1.0])
    with pytest.raises(NotImplementedError):
        nvfp4_quantize(a, gs, do_shuffle=True)
    with pytest.raises(NotImplementedError):
        nvfp4_quantize(a, gs, per_token_activation=True)
    with pytest.raises(NotImplementedError):
        nvfp4_quantize(a, gs, nvfp4_4over6=object())
    with pytest.raises(ValueError):
        nvfp4_quantize(a, gs, sf_vec_size=32)
    with pytest.raises(ValueError):
        nvfp4_quantize(a, torch.ones(5))
    with pytest.raises(ValueError):
        nvfp4_quantize(torch.ones(2, 24), gs)
    nvfp4_quantize(a, gs, nvfp4_4over6=None)  # "off" is what we implement


# ------------------------------------------------------- FlashInfer's own CPU code (no GPU needed)
def test_dequantize_matches_flashinfer_cpu_fallback() -> None:
    """FlashInfer's quantizers need CUDA, but its pure-torch dequantizer (linear layout) runs here."""
    fq = pytest.importorskip("flashinfer.quantization.fp4_quantization")
    ref_fn = getattr(fq, "_e2m1_and_ufp8sf_scale_to_float_cpu", None)
    if ref_fn is None:
        pytest.skip("this FlashInfer has no CPU dequantization fallback")
    a = _rand((96, 256), torch.float32, seed=14)
    x_q, sf = mxfp4_quantize(a, sfLayout=SfLayout.layout_linear)
    ref = ref_fn(x_q, sf, None, 32, 0, False)  # UE8M0 scales, no global scale, linear layout
    assert torch.equal(mxfp4_dequantize(x_q, sf, sfLayout=SfLayout.layout_linear), ref)
    gs = 448.0 * 6.0 / a.abs().max().item()
    x_q, sf = nvfp4_quantize(a, torch.tensor([gs]), sfLayout=SfLayout.layout_linear)
    ref = ref_fn(x_q, sf, torch.tensor([1.0 / gs]), 16, 1, False)  # FlashInfer multiplies by 1/gs
    ours = nvfp4_dequantize(x_q, sf, gs, sfLayout=SfLayout.layout_linear)
    torch.testing.assert_close(ours, ref, rtol=2.0**-22, atol=0.0)
