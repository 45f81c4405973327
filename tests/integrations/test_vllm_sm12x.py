# SPDX-License-Identifier: Apache-2.0
"""Rung 4 for the vLLM plugin: vLLM's GPT-OSS MoE method replaced by ours, on an SM120/SM121 GPU, at GPT-OSS sizes
(weights in vLLM's loaded layout, padded as our method asks), against the float64 reference. Skipped without
such a GPU or without vLLM (and then not counted as passing)."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

pytestmark = pytest.mark.sm12x
vllm = pytest.importorskip("vllm")


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("num_t", [1, 64, 1000])
def test_gpt_oss_layer_through_vllm_method(monkeypatch: pytest.MonkeyPatch, act: str, num_t: int) -> None:
    from vllm.config import VllmConfig, set_current_vllm_config

    from flashinfer_sm12x.integrations import vllm_plugin as vp
    from tests.integrations.test_vllm_plugin import _Layer, _moe_config

    monkeypatch.setenv(vp.ENV_ACT, act)
    assert vp.sm12x_gpu()
    hp = 2944  # 2880 padded to 128, as the method's maybe_roundup_sizes asks
    moe, _ = _moe_config(hidden=hp, inter=hp, experts=32)
    with set_current_vllm_config(VllmConfig()):
        method = vp.install()()._make_moe_method(moe)
    assert method.uses_sm12x
    raw = {k: v.cuda() for k, v in make_weights(32, hp, hp).items()}
    layer = _Layer(raw)
    method.process_weights_after_loading(layer)
    x, logits = make_inputs(num_t, hp, 32)
    x, logits = x.cuda().bfloat16(), logits.cuda()
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    weights = torch.softmax(logits.gather(1, ids.long()), dim=1)
    out = method.apply(layer, x, weights, ids, None, None)
    ref = gpt_oss_moe_reference(x, (ids, weights), **raw, act_quant=act)
    assert float((out.double() - ref).norm() / ref.norm()) < 0.02
