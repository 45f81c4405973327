# SPDX-License-Identifier: Apache-2.0
"""flashinfer_sm12x: MXFP4 GEMM, grouped GEMM and fused MoE for SM120/SM121, as a FlashInfer extension.

The names below mirror FlashInfer's where FlashInfer has them (`mm_fp4`, the quantizers, `cutlass_fused_moe`). They
are imported on first use (PEP 562), so `import flashinfer_sm12x` and the command line (`flashinfer-sm12x --help`,
`cache list`, `prebuild`) do not pay for importing torch and FlashInfer.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "cutlass_fused_moe": ".integrations.flashinfer_cutlass_fused_moe",
    "fused_moe": ".moe.fused_moe",
    "grouped_mm_fp4": ".ops.grouped_mm_fp4",
    "mm_fp4": ".integrations.flashinfer_mm_fp4",
    "mm_mxfp8_mxfp4": ".ops.mm_fp4",
    "mxfp4_dequantize": ".formats.quantize",
    "mxfp4_quantize": ".ops.quantize",  # CUDA kernels; the torch reference elsewhere
    "mxfp8_dequantize": ".formats.quantize",
    "mxfp8_quantize": ".ops.quantize",  # CUDA kernels; the torch reference elsewhere
    "nvfp4_quantize": ".ops.quantize",  # CUDA kernels; the torch reference elsewhere
    "prepare_gpt_oss_weights": ".moe.weights",
}

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

if TYPE_CHECKING:
    from .formats.quantize import mxfp4_dequantize, mxfp8_dequantize
    from .integrations.flashinfer_cutlass_fused_moe import cutlass_fused_moe
    from .integrations.flashinfer_mm_fp4 import mm_fp4
    from .moe.fused_moe import fused_moe
    from .moe.weights import prepare_gpt_oss_weights
    from .ops.grouped_mm_fp4 import grouped_mm_fp4
    from .ops.mm_fp4 import mm_mxfp8_mxfp4
    from .ops.quantize import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flashinfer_sm12x' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
