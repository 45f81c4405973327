# SPDX-License-Identifier: Apache-2.0
"""CUDA checks: our quantizers give the same bits on CUDA as on CPU, and (on SM100+/SM12x, where
FlashInfer's quantization kernels are compiled in) the same bits as FlashInfer's own quantizers.

FlashInfer's quantize kernels are guarded by __CUDA_ARCH__ >= 1000, so on SM90 they run but write
nothing meaningful: the FlashInfer comparisons skip there. Inputs are finite: for NaN/Inf blocks
our documented rule (NaN scale) deliberately differs from FlashInfer's kernels.
"""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x import formats as F
from flashinfer_sm12x.formats import SfLayout

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LAYOUTS = [SfLayout.layout_128x4, SfLayout.layout_8x4, SfLayout.layout_linear]
SHAPES = [(1, 32), (7, 64), (130, 160), (300, 2880), (2, 65, 256)]


def _data(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random rows at many magnitudes, with zero blocks, exact ties and values at 6 * 2^k."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-20, 20, (*shape[:-1], 1), generator=g))
    flat = x.reshape(-1, shape[-1])
    flat[0, :16] = 0.0
    if flat.shape[0] > 2:
        flat[1, :8] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
        flat[2, :4] = torch.tensor([6.0, 7.0, 8.0, 12.0]) * 2.0**-3
    return x.to(dtype)


def _flashinfer():
    fi = pytest.importorskip("flashinfer")
    if torch.cuda.get_device_capability() < (10, 0):
        pytest.skip("FlashInfer's quantization kernels need SM100+ (this GPU would get no-op kernels)")
    return fi


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != torch.uint8:
        a = a.view(torch.uint8)
    if b.dtype != torch.uint8:
        b = b.view(torch.uint8)
    return a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


# ------------------------------------------------------------------- our code, CPU vs CUDA
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ours_cuda_equals_cpu(layout: SfLayout, dtype: torch.dtype) -> None:
    a = _data((300, 2880), dtype, seed=1)
    if dtype == torch.float32:  # specials and subnormals too; the rules are the same on both devices
        a[5, 0], a[6, 40], a[7, 99] = float("nan"), float("inf"), 1e-40
    c = a.cuda()
    for fn in (
        lambda t: F.mxfp4_quantize(t, sfLayout=layout),
        lambda t: F.mxfp4_quantize(t, sfLayout=layout, recipe="floor"),
        lambda t: F.mxfp8_quantize(t, sf_swizzle_layout=layout, alignment=128),
        lambda t: F.nvfp4_quantize(t, torch.tensor([3.0e5]), sfLayout=layout),
    ):
        (q_cpu, s_cpu), (q_gpu, s_gpu) = fn(a), fn(c)
        assert q_gpu.is_cuda and s_gpu.is_cuda
        assert _same(q_cpu, q_gpu) and _same(s_cpu, s_gpu)
    q, s = F.mxfp4_quantize(c, sfLayout=layout)
    d_gpu, d_cpu = F.mxfp4_dequantize(q, s, sfLayout=layout), F.mxfp4_dequantize(q.cpu(), s.cpu(), sfLayout=layout)
    assert torch.equal(d_gpu.cpu().nan_to_num(7.0), d_cpu.nan_to_num(7.0))


def test_codecs_cuda_equal_cpu() -> None:
    x = torch.cat([torch.randn(100000) * 100, torch.tensor([0.0, -0.0, 1e-45, 1e-40, float("nan"), float("inf")])])
    assert torch.equal(F.e2m1_encode(x.cuda()).cpu(), F.e2m1_encode(x))
    assert torch.equal(F.e4m3_encode(x.cuda()).cpu(), F.e4m3_encode(x))
    for recipe in ("rceil", "floor"):
        assert torch.equal(F.e8m0_from_amax(x.cuda(), recipe).cpu(), F.e8m0_from_amax(x, recipe))
    codes = torch.arange(256, dtype=torch.uint8)
    for dec in (F.e8m0_decode, F.e4m3_decode, F.e2m1_decode):
        assert torch.equal(dec(codes.cuda()).cpu().nan_to_num(7.0), dec(codes).nan_to_num(7.0))


# ------------------------------------------------------------------- against FlashInfer
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_mxfp4_quantize_bit_exact(layout: SfLayout, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    fi = _flashinfer()
    a = _data(shape, dtype, seed=2).cuda()
    q_ref, s_ref = fi.mxfp4_quantize(a, sfLayout=layout)
    q, s = F.mxfp4_quantize(a, sfLayout=layout)
    assert _same(q, q_ref), "packed E2M1 data differs from flashinfer.mxfp4_quantize"
    assert _same(s, s_ref), f"scales differ: ours {tuple(s.shape)}, flashinfer {tuple(s_ref.shape)}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mxfp4_dequantize_matches(layout: SfLayout) -> None:
    fi = _flashinfer()
    a = _data((130, 256), torch.bfloat16, seed=3).cuda()
    q, s = F.mxfp4_quantize(a, sfLayout=layout)
    ref = fi.mxfp4_dequantize(q, s, sfLayout=layout)
    ours = F.mxfp4_dequantize(q, s, sfLayout=layout)
    assert torch.equal(ours.cpu(), ref.cpu().float().reshape(ours.shape))


@pytest.mark.parametrize("swizzled", [True, False])
@pytest.mark.parametrize("alignment", [32, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_mxfp8_quantize_bit_exact(swizzled: bool, alignment: int, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    fi = _flashinfer()
    a = _data(shape, dtype, seed=4).cuda()
    q_ref, s_ref = fi.mxfp8_quantize(a, is_sf_swizzled_layout=swizzled, alignment=alignment)
    q, s = F.mxfp8_quantize(a, is_sf_swizzled_layout=swizzled, alignment=alignment)
    assert q.dtype == q_ref.dtype
    assert _same(q, q_ref), "E4M3 data differs from flashinfer.mxfp8_quantize"
    assert _same(s, s_ref), f"scales differ: ours {tuple(s.shape)}, flashinfer {tuple(s_ref.shape)}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_nvfp4_quantize_matches(layout: SfLayout, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Scales and elements equal up to FlashInfer's approximate reciprocals (rcp.approx): at most
    0.1% of them may differ, each by one step."""
    fi = _flashinfer()
    a = _data(shape, dtype, seed=5).cuda()
    gs = (448.0 * 6.0 / a.float().abs().amax()).reshape(1).float()
    q_ref, s_ref = fi.nvfp4_quantize(a, gs, sfLayout=layout)
    q, s = F.nvfp4_quantize(a, gs, sfLayout=layout)
    assert q.shape == q_ref.shape and s.shape == s_ref.shape
    s, s_ref = s.view(torch.uint8).int().cpu(), s_ref.view(torch.uint8).int().cpu()
    assert (s - s_ref).abs().max() <= 1 and (s != s_ref).float().mean() <= 1e-3
    e, e_ref = F.unpack_e2m1(q.cpu()), F.unpack_e2m1(q_ref.view(torch.uint8).cpu())
    v, v_ref = F.e2m1_decode(e), F.e2m1_decode(e_ref)
    diff = e != e_ref
    assert diff.float().mean() <= 1e-3, f"{int(diff.sum())} of {diff.numel()} elements differ"
    assert ((v - v_ref).abs()[diff] <= 2.0).all()


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (130, 5), (300, 90), (3, 130, 5)])
def test_swizzle_matches_block_scale_interleave(shape: tuple[int, ...]) -> None:
    fi = pytest.importorskip("flashinfer")
    g = torch.Generator().manual_seed(6)
    sf = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).cuda()
    ref = fi.block_scale_interleave(sf)
    ours = F.swizzle_sf(sf)
    assert ours.shape == ref.shape and torch.equal(ours.cpu(), ref.cpu())
