"""flashinfer_sm12x: MXFP4 GEMM, grouped GEMM and fused MoE for SM120/SM121, as a FlashInfer extension."""

from __future__ import annotations

__version__ = "0.1.0"

from .formats import mxfp4_dequantize, mxfp8_dequantize  # noqa: E402  (FlashInfer-compatible, top level)
from .integrations.flashinfer_cutlass_fused_moe import cutlass_fused_moe  # noqa: E402
from .moe.fused_moe import fused_moe  # noqa: E402
from .moe.weights import prepare_gpt_oss_weights  # noqa: E402
from .ops.grouped_mm_fp4 import grouped_mm_fp4  # noqa: E402
from .ops.mm_fp4 import mm_fp4, mm_mxfp8_mxfp4  # noqa: E402
from .ops.quantize import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize  # noqa: E402  (kernels on CUDA)

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
