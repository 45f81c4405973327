# SPDX-License-Identifier: Apache-2.0
"""flashinfer_sm12x: MXFP4 GEMM, grouped GEMM and fused MoE for SM120/SM121, as a FlashInfer extension.

The names below mirror FlashInfer's where FlashInfer has them (`mm_fp4`, the quantizers, `cutlass_fused_moe`).
"""

from __future__ import annotations

from ._version import __version__
from .formats import mxfp4_dequantize, mxfp8_dequantize
from .integrations.flashinfer_cutlass_fused_moe import cutlass_fused_moe
from .integrations.flashinfer_mm_fp4 import mm_fp4
from .moe.fused_moe import fused_moe
from .moe.weights import prepare_gpt_oss_weights
from .ops.grouped_mm_fp4 import grouped_mm_fp4
from .ops.mm_fp4 import mm_mxfp8_mxfp4
from .ops.quantize import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize  # kernels on CUDA, torch on CPU

__all__ = [
    "__version__",
    "cutlass_fused_moe",
    "fused_moe",
    "grouped_mm_fp4",
    "mm_fp4",
    "mm_mxfp8_mxfp4",
    "mxfp4_dequantize",
    "mxfp4_quantize",
    "mxfp8_dequantize",
    "mxfp8_quantize",
    "nvfp4_quantize",
    "prepare_gpt_oss_weights",
]
