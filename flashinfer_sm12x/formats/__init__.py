# SPDX-License-Identifier: Apache-2.0
"""Block-scaled number formats (E2M1, E8M0, E4M3), scale-factor layouts and the torch quantizers.

Pure torch: every function runs on CPU and CUDA tensors and needs no compiled code. The quantizers
mirror FlashInfer's signatures and output shapes so tests can compare against them bit for bit.
"""

from __future__ import annotations

from .e2m1 import e2m1_decode, e2m1_encode, pack_e2m1, unpack_e2m1
from .e4m3 import E4M3_MAX, e4m3_decode, e4m3_encode
from .e8m0 import RECIPES, Recipe, e8m0_decode, e8m0_from_amax, e8m0_inverse, exact_pow2
from .quantize import (
    mxfp4_dequantize,
    mxfp4_quantize,
    mxfp8_dequantize,
    mxfp8_dequantize_host,
    mxfp8_quantize,
    nvfp4_dequantize,
    nvfp4_quantize,
)
from .scale_layout import SfLayout, as_sf_layout, swizzle_sf, swizzled_sf_size, unswizzle_sf

__all__ = [
    "E4M3_MAX",
    "RECIPES",
    "Recipe",
    "SfLayout",
    "as_sf_layout",
    "e2m1_decode",
    "e2m1_encode",
    "e4m3_decode",
    "e4m3_encode",
    "e8m0_decode",
    "e8m0_from_amax",
    "e8m0_inverse",
    "exact_pow2",
    "mxfp4_dequantize",
    "mxfp4_quantize",
    "mxfp8_dequantize",
    "mxfp8_dequantize_host",
    "mxfp8_quantize",
    "nvfp4_dequantize",
    "nvfp4_quantize",
    "pack_e2m1",
    "swizzle_sf",
    "swizzled_sf_size",
    "unpack_e2m1",
    "unswizzle_sf",
]
