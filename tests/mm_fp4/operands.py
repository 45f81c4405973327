# SPDX-License-Identifier: Apache-2.0
"""CPU operands of the mm_fp4 argument tests: MXFP4 `a`, `b` = w.T and their 128x4 scales, as FlashInfer passes them."""

from __future__ import annotations

import torch

from flashinfer_sm12x.formats import mxfp4_quantize


def mxfp4_operands(m: int, n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    """Random [m, k] activations and [n, k] weights quantized to MXFP4 (the torch reference quantizer)."""
    gen = torch.Generator().manual_seed(seed)
    a, a_sf = mxfp4_quantize(torch.randn(m, k, generator=gen))
    w, w_sf = mxfp4_quantize(torch.randn(n, k, generator=gen))
    return {"a": a, "b": w.T, "a_descale": a_sf, "b_descale": w_sf.T}
