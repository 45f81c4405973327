# SPDX-License-Identifier: Apache-2.0
"""Scale-factor layouts shared with CUTLASS and FlashInfer.

For row m, scale column kb and batch b of an [B, M, KB] scale tensor:
- 128x4 (CUTLASS Sm1xxBlockScaledConfig, FlashInfer `layout_128x4`), rows padded to 128, columns
  to a multiple of 4:
  off = b*nMT*nKT*512 + (m//128)*nKT*512 + (kb//4)*512 + (m%32)*16 + ((m%128)//32)*4 + kb%4
- 8x4 (TRT-LLM `layout_8x4`), rows padded to 8:
  off = b*nMT*nKT*32 + (m//8)*nKT*32 + (kb//4)*32 + (m%8)*4 + kb%4
- linear: row-major [M, KB], no padding.
Padding is filled with zeros. Each batch is padded on its own, like FlashInfer's
`block_scale_interleave` for 3-D input; the quantizers flatten leading dimensions into rows first,
like FlashInfer's `fp4_quantize`.
"""

from __future__ import annotations

import math
from enum import IntEnum

import torch

from ..checks import round_up

try:  # Use FlashInfer's enum so callers can pass its members straight through.
    from flashinfer.tllm_enums import SfLayout
except Exception:  # flashinfer absent, or unable to import on this machine

    class SfLayout(IntEnum):  # type: ignore[no-redef]
        """Same member names and values as flashinfer.tllm_enums.SfLayout."""

        layout_128x4 = 0
        layout_8x4 = 1
        layout_linear = 2


_BY_NAME = {"128x4": SfLayout.layout_128x4, "8x4": SfLayout.layout_8x4, "linear": SfLayout.layout_linear}


def as_sf_layout(layout: SfLayout | int | str) -> SfLayout:
    """Normalise an SfLayout member, its integer value or "128x4" / "8x4" / "linear"."""
    if isinstance(layout, str):
        key = layout.removeprefix("layout_")
        if key not in _BY_NAME:
            raise ValueError(f"unknown scale-factor layout {layout!r}; use one of {sorted(_BY_NAME)}")
        return _BY_NAME[key]
    if isinstance(layout, bool) or not hasattr(type(layout), "__index__"):  # True / 1.0 as a layout: a caller bug
        raise TypeError(f"scale-factor layout must be an SfLayout, its int value or its name, got {layout!r}")
    try:
        return SfLayout(int(layout))
    except (ValueError, TypeError):
        raise ValueError(f"unknown scale-factor layout {layout!r}") from None


def _row_tile(layout: SfLayout) -> int:
    return 128 if layout == SfLayout.layout_128x4 else 8


def swizzled_sf_size(m: int, kb: int, layout: SfLayout | int | str = SfLayout.layout_128x4) -> int:
    """Number of bytes one [m, kb] scale matrix takes in `layout` (padding included)."""
    layout = as_sf_layout(layout)
    if layout == SfLayout.layout_linear:
        return m * kb
    return round_up(m, _row_tile(layout)) * round_up(kb, 4)


def swizzle_sf(sf: torch.Tensor, layout: SfLayout | int | str = SfLayout.layout_128x4) -> torch.Tensor:
    """Reorder scales [..., M, KB] into `layout`; returns a flat 1-D tensor (dtype kept).

    Output length: B * swizzled_sf_size(M, KB), B = product of the leading dimensions. This is the
    shape FlashInfer's `block_scale_interleave` returns; reshape to (-1, round_up(KB, 4)) for the
    2-D view that `fp4_quantize` / `mxfp4_quantize` return.
    """
    layout = as_sf_layout(layout)
    if sf.dim() < 2:
        raise ValueError(f"swizzle_sf: expected [..., M, KB], got shape {tuple(sf.shape)}")
    m, kb = sf.shape[-2], sf.shape[-1]
    x = sf.reshape(math.prod(sf.shape[:-2]), m, kb)
    if layout == SfLayout.layout_linear:
        return x.reshape(-1).clone()
    b, rt = x.shape[0], _row_tile(layout)
    pm, pk = round_up(m, rt), round_up(kb, 4)
    x = torch.nn.functional.pad(x, (0, pk - kb, 0, pm - m)) if (pm, pk) != (m, kb) else x
    if layout == SfLayout.layout_128x4:
        # m = mt*128 + r4*32 + r32, kb = kt*4 + c  ->  order (b, mt, kt, r32, r4, c)
        x = x.reshape(b, pm // 128, 4, 32, pk // 4, 4).permute(0, 1, 4, 3, 2, 5)
    else:
        # m = mt*8 + r8, kb = kt*4 + c  ->  order (b, mt, kt, r8, c)
        x = x.reshape(b, pm // 8, 8, pk // 4, 4).permute(0, 1, 3, 2, 4)
    return x.reshape(-1).contiguous()


def unswizzle_sf(
    swizzled: torch.Tensor, m: int, kb: int, layout: SfLayout | int | str = SfLayout.layout_128x4
) -> torch.Tensor:
    """Inverse of `swizzle_sf`: any-shaped buffer -> [m, kb] (or [B, m, kb] when it holds B > 1)."""
    layout = as_sf_layout(layout)
    per = swizzled_sf_size(m, kb, layout)
    n = swizzled.numel()
    if per == 0 or n % per:
        raise ValueError(
            f"unswizzle_sf: {n} scale bytes is not a whole number of {layout.name} [{m}, {kb}] matrices "
            f"({per} bytes each)"
        )
    b = n // per
    flat = swizzled.reshape(-1)
    if layout == SfLayout.layout_linear:
        x = flat.reshape(b, m, kb)
    else:
        rt = _row_tile(layout)
        pm, pk = round_up(m, rt), round_up(kb, 4)
        if layout == SfLayout.layout_128x4:
            x = flat.reshape(b, pm // 128, pk // 4, 32, 4, 4).permute(0, 1, 4, 3, 2, 5)
        else:
            x = flat.reshape(b, pm // 8, pk // 4, 8, 4).permute(0, 1, 3, 2, 4)
        x = x.reshape(b, pm, pk)[:, :m, :kb]
    x = x.contiguous()
    return x[0] if b == 1 else x
