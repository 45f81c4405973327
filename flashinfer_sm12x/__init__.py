"""flashinfer_sm12x: MXFP4 GEMM, grouped GEMM and fused MoE for SM120/SM121, as a FlashInfer extension."""

from __future__ import annotations

__version__ = "0.1.0"
