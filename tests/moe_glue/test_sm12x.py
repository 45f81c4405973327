# SPDX-License-Identifier: Apache-2.0
"""The FlashInfer-signature cutlass_fused_moe (W4A8: native SM120/SM121 only) through the glue kernels against its
torch pipeline: pre-quantized MXFP8 gather (swizzled and linear input_sf), per-expert g1/g2 and SwiGLU parameters,
expert parallelism (other ranks' experts weigh 0)."""

from __future__ import annotations

import pytest
import torch

import flashinfer_sm12x.integrations.flashinfer_cutlass_fused_moe as entry
from flashinfer_sm12x.formats import mxfp8_quantize
from flashinfer_sm12x.testing.moe_cases import H, make_inputs, rel_l2, weights

pytestmark = pytest.mark.sm12x


@pytest.mark.parametrize(("num_t", "swizzled", "ep_size"), [(1, True, 1), (64, False, 1), (1000, True, 2)])
def test_cutlass_entry_kernels_match_its_torch_pipeline(monkeypatch: pytest.MonkeyPatch, num_t: int, swizzled: bool,
                                                        ep_size: int) -> None:
    _, w = weights(32, "mxfp8", interleaved=False, up_first=True)
    hidden, logits = make_inputs(num_t, H, 32 * ep_size)
    hidden, logits = hidden.cuda(), logits.cuda()
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    scales = torch.softmax(logits.gather(1, ids.long()), dim=1)
    xq, xsf = mxfp8_quantize(torch.nn.functional.pad(hidden.float(), (0, w.hidden_size_padded - H)), swizzled, 32)
    g = torch.Generator().manual_seed(0)
    quant = w.flashinfer_quant_scales()
    quant[1], quant[3] = (torch.rand(32, generator=g) + 0.5).cuda(), (torch.rand(32, generator=g) + 0.5).cuda()
    per_e = {"swiglu_alpha": (torch.rand(32, generator=g) + 1).cuda(),
             "swiglu_beta": torch.rand(32, generator=g).cuda(),
             "swiglu_limit": (torch.rand(32, generator=g) * 4 + 3).cuda()}

    def run() -> torch.Tensor:
        return entry.cutlass_fused_moe(xq, ids, scales, w.w13, w.w2, torch.bfloat16, quant, w.w13_bias, w.w2_bias, xsf,
                                       use_mxfp8_act_scaling=True, swizzled_input_sf=swizzled, ep_size=ep_size,
                                       ep_rank=ep_size - 1, **per_e)

    got = run()
    monkeypatch.setattr(entry, "USE_KERNELS", False)
    want = run()
    assert got.isfinite().all() and rel_l2(got, want.double()) < 2e-3
