# SPDX-License-Identifier: Apache-2.0
"""MXFP4 / MXFP8 / NVFP4 quantizers in plain torch: the CPU path of the package's quantizers and the oracle its CUDA
quantizer kernels are tested against bit for bit (any device).

Argument names, order and defaults copy FlashInfer 0.7.2.post1's functions of the same name; what we
add is keyword-only. Outputs have FlashInfer's shapes and dtypes (see each docstring) and stay on
the input's device. `backend` and `enable_pdl` are accepted for compatibility and change nothing.

Element rounding everywhere: scale the block by 1/scale in float32, then round to nearest even with
satfinite (see e2m1.py / e4m3.py). Blocks whose absolute maximum is NaN or +-inf get a NaN scale
(E8M0 0xFF, E4M3 0x7F); their elements are then NaN-encoded (E2M1 0x7, E4M3 0x7F).
"""

from __future__ import annotations

import torch

from ..checks import round_up
from .e2m1 import e2m1_decode, e2m1_encode, pack_e2m1, unpack_e2m1
from .e4m3 import E4M3_NAN, e4m3_decode, e4m3_encode
from .e8m0 import Recipe, e8m0_decode, e8m0_from_amax, e8m0_inverse
from .scale_layout import SfLayout, as_sf_layout, swizzle_sf, swizzled_sf_size, unswizzle_sf

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_UNSET = object()  # stands in for FlashInfer's "read the environment" default of nvfp4_4over6
_FLT_MAX = torch.finfo(torch.float32).max


def _check_backend(backend: str, allowed: tuple[str, ...], fn: str) -> None:
    if backend not in allowed:
        raise ValueError(f"{fn}: unknown backend {backend!r}; must be one of {allowed}")


def _check_input(a: torch.Tensor, block: int, fn: str) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{fn}: expected a torch.Tensor, got {type(a).__name__}")
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: input dtype must be float32, float16 or bfloat16, got {a.dtype}")
    if a.dim() < 2:
        raise ValueError(f"{fn}: input must be at least 2-D [..., M, K], got shape {tuple(a.shape)}")
    if a.shape[-1] == 0 or a.shape[-1] % block:
        raise ValueError(f"{fn}: K = {a.shape[-1]} must be a positive multiple of the block size {block}")


def _is_column_major(a: torch.Tensor) -> bool:
    # FlashInfer's fp4_quantize puts the blocks of a column-major [.., M, K] input along M: it
    # quantizes the row-major transpose and returns both outputs transposed. We copy that for
    # genuinely column-major inputs (FlashInfer's test, stride(-2) == 1, also fires on degenerate
    # strides of size-1 dimensions, which we treat as row-major).
    return a.dim() >= 2 and a.stride(-2) == 1 and a.stride(-1) != 1 and min(a.shape[-2:]) > 1


def _blocks(a: torch.Tensor, block: int) -> torch.Tensor:
    """[..., K] -> float32 [rows, K/block, block]; leading dimensions flatten into rows (FlashInfer)."""
    return a.float().reshape(-1, a.shape[-1] // block, block)


def _sf_out(codes: torch.Tensor, layout: SfLayout) -> torch.Tensor:
    """[rows, KB] codes -> FlashInfer's fp4_quantize scale shape for `layout` (2-D)."""
    if layout == SfLayout.layout_linear:
        return codes.contiguous()
    return swizzle_sf(codes, layout).reshape(-1, round_up(codes.shape[-1], 4))


def _sf_rows(sf: torch.Tensor, rows: int, kb: int, layout: SfLayout, fn: str) -> torch.Tensor:
    """Scales in `layout` (any shape) -> [rows, kb]."""
    if sf.dtype != torch.uint8:
        sf = sf.view(torch.uint8)
    want = swizzled_sf_size(rows, kb, layout)
    if want == 0:
        return sf.new_zeros(rows, kb)
    if sf.numel() != want:
        raise ValueError(f"{fn}: expected {want} scale bytes for [{rows}, {kb}] in {layout.name}, got {sf.numel()}")
    return unswizzle_sf(sf, rows, kb, layout).reshape(rows, kb)


def _packed_rows(a_fp4: torch.Tensor, block: int, fn: str) -> tuple[int, int]:
    if a_fp4.dtype != torch.uint8:
        raise TypeError(f"{fn}: packed FP4 data must be uint8, got {a_fp4.dtype}")
    if a_fp4.dim() < 1 or (2 * a_fp4.shape[-1]) % block or a_fp4.shape[-1] == 0:
        raise ValueError(f"{fn}: last dimension {tuple(a_fp4.shape)} * 2 must be a multiple of {block}")
    return a_fp4.numel() // a_fp4.shape[-1], 2 * a_fp4.shape[-1]


# ---------------------------------------------------------------------------------------- MXFP4
def mxfp4_quantize(
    a: torch.Tensor,
    backend: str = "cuda",
    enable_pdl: bool | None = None,
    sfLayout: SfLayout = SfLayout.layout_128x4,  # FlashInfer's argument name
    *,
    recipe: Recipe = "rceil",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4: E2M1 elements, blocks of 32 along K, E8M0 scales.

    Returns (x_q uint8 [..., K/2], sf uint8): sf is [round_up(rows, R), round_up(K/32, 4)] for the
    swizzled layouts (R = 128 or 8) and [rows, K/32] for layout_linear, rows = numel / K. These are
    the shapes FlashInfer's `mxfp4_quantize` returns. A column-major input is quantized along
    dim -2 and both outputs come back transposed, as in FlashInfer.
    """
    layout = as_sf_layout(sfLayout)
    _check_backend(backend, ("cuda", "cute-dsl"), "mxfp4_quantize")
    if isinstance(a, torch.Tensor) and _is_column_major(a):
        x_q, sf = mxfp4_quantize(a.transpose(-2, -1), backend, enable_pdl, layout, recipe=recipe)
        return x_q.transpose(-2, -1), sf.transpose(-2, -1)
    _check_input(a, 32, "mxfp4_quantize")
    x = _blocks(a, 32)
    codes = e8m0_from_amax(x.abs().amax(dim=-1), recipe, elem_max=6.0)
    q = e2m1_encode(x * e8m0_inverse(codes).unsqueeze(-1))
    return pack_e2m1(q.reshape(a.shape)), _sf_out(codes, layout)


def mxfp4_dequantize(
    a_fp4: torch.Tensor,
    a_sf: torch.Tensor,
    sfLayout: SfLayout = SfLayout.layout_128x4,
    *,
    block_size: int = 32,
) -> torch.Tensor:
    """Packed MXFP4 [..., K/2] + E8M0 scales in `sfLayout` -> float32 [..., K] (on a_fp4's device)."""
    layout = as_sf_layout(sfLayout)
    rows, k = _packed_rows(a_fp4, block_size, "mxfp4_dequantize")
    sf = _sf_rows(a_sf, rows, k // block_size, layout, "mxfp4_dequantize")
    vals = e2m1_decode(unpack_e2m1(a_fp4)).reshape(rows, k // block_size, block_size)
    return (vals * e8m0_decode(sf).unsqueeze(-1)).reshape(*a_fp4.shape[:-1], k)


# ---------------------------------------------------------------------------------------- MXFP8
def _mxfp8_layout(is_sf_swizzled_layout: bool, sf_swizzle_layout: SfLayout | None) -> SfLayout:
    if sf_swizzle_layout is not None:
        return as_sf_layout(sf_swizzle_layout)
    return SfLayout.layout_128x4 if is_sf_swizzled_layout else SfLayout.layout_linear


def mxfp8_quantize(
    input: torch.Tensor,  # FlashInfer's argument name
    is_sf_swizzled_layout: bool = True,
    alignment: int = 32,
    enable_pdl: bool | None = None,
    backend: str = "cuda",
    sf_swizzle_layout: SfLayout | None = None,
    *,
    recipe: Recipe = "rceil",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8: E4M3 elements, blocks of 32, E8M0 scales (elem_max 448).

    Returns (x_q float8_e4m3fn [..., Kp], sf uint8 1-D) with Kp = round_up(K, alignment); the padded
    columns hold zeros and zero scales. sf has rows * Kp/32 bytes (linear) or
    round_up(rows, R) * round_up(Kp/32, 4) (swizzled): FlashInfer's CUDA path returns this flat shape.
    """
    layout = _mxfp8_layout(is_sf_swizzled_layout, sf_swizzle_layout)
    _check_backend(backend, ("cuda", "cute-dsl"), "mxfp8_quantize")
    _check_input(input, 32, "mxfp8_quantize")
    if not isinstance(alignment, int) or isinstance(alignment, bool):
        raise TypeError(f"mxfp8_quantize: alignment must be an int, got {type(alignment).__name__}")
    k = input.shape[-1]
    kp = round_up(k, alignment) if alignment > 0 else -1
    if kp < 0 or kp % 32:
        raise ValueError(f"mxfp8_quantize: alignment {alignment} must pad K = {k} to a multiple of 32")
    x = _blocks(input, 32)
    codes = e8m0_from_amax(x.abs().amax(dim=-1), recipe, elem_max=448.0)
    q = e4m3_encode(x * e8m0_inverse(codes).unsqueeze(-1)).reshape(-1, k)
    if kp != k:  # zero data and zero scales in the alignment padding, as FlashInfer writes them
        q = torch.nn.functional.pad(q, (0, kp - k))
        codes = torch.nn.functional.pad(codes, (0, (kp - k) // 32))
    x_q = q.view(torch.float8_e4m3fn).reshape(*input.shape[:-1], kp)
    return x_q, swizzle_sf(codes, layout)


def mxfp8_dequantize(
    input: torch.Tensor,
    scale_tensor: torch.Tensor,
    is_sf_swizzled_layout: bool = True,
    sf_swizzle_layout: SfLayout | None = None,
) -> torch.Tensor:
    """MXFP8 [..., K] (float8_e4m3fn or its uint8 bits) + scales -> float32 [..., K].

    Same arguments as FlashInfer's `mxfp8_dequantize_host`, but runs on any device.
    """
    layout = _mxfp8_layout(is_sf_swizzled_layout, sf_swizzle_layout)
    if input.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise TypeError(f"mxfp8_dequantize: expected float8_e4m3fn or uint8 data, got {input.dtype}")
    if input.dim() < 1 or input.shape[-1] == 0 or input.shape[-1] % 32:
        raise ValueError(f"mxfp8_dequantize: K of shape {tuple(input.shape)} must be a multiple of 32")
    k = input.shape[-1]
    rows = input.numel() // k
    sf = _sf_rows(scale_tensor, rows, k // 32, layout, "mxfp8_dequantize")
    vals = e4m3_decode(input).reshape(rows, k // 32, 32)
    return (vals * e8m0_decode(sf).unsqueeze(-1)).reshape(input.shape)


mxfp8_dequantize_host = mxfp8_dequantize


# ---------------------------------------------------------------------------------------- NVFP4
def check_global_scale_device(gs: object, device: torch.device, fn: str) -> None:
    """A global scale tensor must be on the data's device or the CPU (a host value, copied once); one on another
    device (another GPU) is a caller bug: ValueError, before anything is copied or launched."""
    if isinstance(gs, torch.Tensor) and gs.device != device and gs.device.type != "cpu":
        raise ValueError(f"{fn}: a_global_sf must be on the input's device ({device}) or the CPU, got {gs.device}")


def _global_scale(gs: torch.Tensor | float, rows: int, device: torch.device, fn: str) -> torch.Tensor:
    """Per-tensor ([1]) or per-row ([rows]) float32 global scale, shaped to broadcast over [rows, KB]."""
    check_global_scale_device(gs, device, fn)
    t = torch.as_tensor(gs, dtype=torch.float32).to(device=device, dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(1, 1)
    if t.numel() == rows:
        return t.reshape(rows, 1)
    raise ValueError(f"{fn}: a_global_sf must have 1 or {rows} (one per row) elements, got {t.numel()}")


def nvfp4_quantize(
    a: torch.Tensor,
    a_global_sf: torch.Tensor | float,
    sfLayout: SfLayout = SfLayout.layout_128x4,
    do_shuffle: bool = False,
    sf_vec_size: int = 16,
    enable_pdl: bool | None = None,
    backend: str = "cuda",
    per_token_activation: bool = False,
    expanded_idx_to_permuted_idx: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    nvfp4_4over6: object = _UNSET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4: E2M1 elements, blocks of 16, E4M3 scales, fp32 global scale gs (typically 448*6/amax).

    Per block, following FlashInfer's kernel: sf = e4m3_rn(gs * (amax * fl32(1/6))); elements are
    e2m1_rn(x * min(1 / (sf * (1 / gs)), FLT_MAX)), all in float32 with correctly rounded divisions
    (FlashInfer's default build uses approximate reciprocals, which can differ in rare last bits).
    A zero block gets sf 0 and zero elements. Returns the same shapes as `mxfp4_quantize` with
    K/16 scale columns. Not implemented: do_shuffle, per_token_activation and 4over6 recipes.
    """
    layout = as_sf_layout(sfLayout)
    _check_backend(backend, ("cuda", "cute-dsl", "cake"), "nvfp4_quantize")
    if do_shuffle or per_token_activation or expanded_idx_to_permuted_idx is not None or out_scale is not None:
        raise NotImplementedError(
            "nvfp4_quantize: do_shuffle, per_token_activation, expanded_idx_to_permuted_idx and out_scale "
            "are not implemented here; use flashinfer.nvfp4_quantize"
        )
    if nvfp4_4over6 is not _UNSET and nvfp4_4over6 is not None:
        raise NotImplementedError("nvfp4_quantize: 4over6 recipes are not implemented; pass None")
    if sf_vec_size != 16:
        raise ValueError(f"nvfp4_quantize: sf_vec_size must be 16, got {sf_vec_size}")
    if isinstance(a, torch.Tensor) and _is_column_major(a):
        x_q, sf = nvfp4_quantize(a.transpose(-2, -1), a_global_sf, layout, nvfp4_4over6=nvfp4_4over6)
        return x_q.transpose(-2, -1), sf.transpose(-2, -1)
    _check_input(a, 16, "nvfp4_quantize")
    x = _blocks(a, 16)
    gs = _global_scale(a_global_sf, x.shape[0], x.device, "nvfp4_quantize")
    amax = x.abs().amax(dim=-1)
    rcp6 = torch.tensor(1.0 / 6.0, dtype=torch.float32, device=x.device)
    codes = e4m3_encode(gs * (amax * rcp6))
    codes = torch.where(torch.isfinite(amax), codes, torch.full_like(codes, E4M3_NAN))
    scale = torch.reciprocal(e4m3_decode(codes) * torch.reciprocal(gs)).clamp(max=_FLT_MAX)
    scale = torch.where(amax != 0, scale, torch.zeros_like(scale))
    q = e2m1_encode(x * scale.unsqueeze(-1))
    return pack_e2m1(q.reshape(a.shape)), _sf_out(codes, layout)


def nvfp4_dequantize(
    a_fp4: torch.Tensor,
    a_sf: torch.Tensor,
    a_global_sf: torch.Tensor | float,
    sfLayout: SfLayout = SfLayout.layout_128x4,
    *,
    sf_vec_size: int = 16,
) -> torch.Tensor:
    """Packed NVFP4 + E4M3 scales -> float32 e2m1 * sf / a_global_sf (the gs given to nvfp4_quantize).

    FlashInfer's `e2m1_and_ufp8sf_scale_to_float` multiplies by its global-scale argument instead,
    so callers of that function pass 1 / gs.
    """
    layout = as_sf_layout(sfLayout)
    rows, k = _packed_rows(a_fp4, sf_vec_size, "nvfp4_dequantize")
    sf = _sf_rows(a_sf, rows, k // sf_vec_size, layout, "nvfp4_dequantize")
    gs = _global_scale(a_global_sf, rows, a_fp4.device, "nvfp4_dequantize")
    vals = e2m1_decode(unpack_e2m1(a_fp4)).reshape(rows, k // sf_vec_size, sf_vec_size)
    out = vals * e4m3_decode(sf).unsqueeze(-1) / gs.unsqueeze(-1)
    return out.reshape(*a_fp4.shape[:-1], k)
