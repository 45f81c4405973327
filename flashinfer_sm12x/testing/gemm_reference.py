# SPDX-License-Identifier: Apache-2.0
"""Reference GEMMs for the kernels' tests: dequantize with the formats module, multiply in float64.

Takes exactly mm_fp4's arguments, so a test calls both with the same tensors. Shares no code with the kernels.
"""

from __future__ import annotations

import torch

from ..formats.quantize import mxfp4_dequantize, mxfp8_dequantize, nvfp4_dequantize
from ..formats.scale_layout import SfLayout


def _weights(b: torch.Tensor, b_descale: torch.Tensor, use_nvfp4: bool) -> torch.Tensor:
    w, w_sf = b.T.contiguous(), b_descale.T.contiguous()  # mm_fp4 takes b = w.T and b_descale transposed
    if use_nvfp4:
        return nvfp4_dequantize(w.view(torch.uint8), w_sf.view(torch.uint8), 1.0, SfLayout.layout_128x4)
    return mxfp4_dequantize(w.view(torch.uint8), w_sf.view(torch.uint8), SfLayout.layout_128x4)


def _finish(a: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    d = a.double() @ w.double().T
    if alpha is not None:
        d = d * alpha.double().reshape(())
    return d.to(out_dtype)


def mm_fp4_reference(a: torch.Tensor, b: torch.Tensor, a_descale: torch.Tensor, b_descale: torch.Tensor,
                     alpha: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                     block_size: int = 16, use_nvfp4: bool = True) -> torch.Tensor:
    """alpha * dequant(a) @ dequant(w).T, rounded once to out_dtype. For NVFP4 the global scales are in alpha."""
    if use_nvfp4:
        a_f = nvfp4_dequantize(a.view(torch.uint8), a_descale.view(torch.uint8), 1.0, SfLayout.layout_128x4)
    else:
        a_f = mxfp4_dequantize(a.view(torch.uint8), a_descale.view(torch.uint8), SfLayout.layout_128x4,
                               block_size=block_size)
    return _finish(a_f, _weights(b, b_descale, use_nvfp4), alpha, out_dtype)


def mm_mxfp8_mxfp4_reference(a: torch.Tensor, b: torch.Tensor, a_descale: torch.Tensor, b_descale: torch.Tensor,
                             alpha: torch.Tensor | None = None,
                             out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """W4A8: MXFP8 activations [m, k] x MXFP4 weights (b = w.T)."""
    a_f = mxfp8_dequantize(a, a_descale.reshape(-1), True, SfLayout.layout_128x4)
    return _finish(a_f, _weights(b, b_descale, False), alpha, out_dtype)
