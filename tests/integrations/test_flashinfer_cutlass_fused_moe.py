# SPDX-License-Identifier: Apache-2.0
"""flashinfer_sm12x.cutlass_fused_moe: FlashInfer's signature and MXFP4 W4A8 convention, on the CPU.

The grouped GEMM is replaced by the torch model of its contract (tests/moe/test_fused_moe.py); the inputs are
built the way vLLM builds them for FlashInfer (mxfp8_quantize'd activations with swizzled scales, up-first
halves, flashinfer_quant_scales), and the result is compared with the float64 GPT-OSS reference, which shares
no code with the glue."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

import flashinfer_sm12x
from flashinfer_sm12x.formats import SfLayout, mxfp8_quantize, unswizzle_sf
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model, make_inputs, make_weights

fm = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # where the MoE calls its grouped GEMM
H, INTER, E = 64, 96, 8  # padded to 128 / 128 by the preparation
HP = 128


@pytest.fixture
def model_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "grouped_mm_fp4", grouped_gemm_model)


def _setup(num_t: int, seed: int = 0):
    raw = make_weights(E, H, INTER, seed=seed)
    w = prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=False, up_first=True, act="mxfp8")
    hidden, logits = make_inputs(num_t, H, E)
    x = torch.nn.functional.pad(hidden.float(), (0, HP - H))
    xq, xsf = mxfp8_quantize(x, True, 32)
    ids = torch.sort(torch.topk(logits, 4, dim=1).indices, dim=1).values.to(torch.int32)
    scales = torch.softmax(logits.gather(1, ids.long()), dim=1)
    return raw, w, hidden, xq, xsf, ids, scales


def _call(w, xq, xsf, ids, scales, **kw):
    gpt_oss = {name: torch.full((E,), v) for name, v in (("swiglu_alpha", 1.702), ("swiglu_beta", 1.0),
                                                           ("swiglu_limit", 7.0))}
    args = dict(fc1_expert_biases=w.w13_bias, fc2_expert_biases=w.w2_bias, input_sf=xsf,
                use_mxfp8_act_scaling=True, **gpt_oss)
    args.update(kw)
    return flashinfer_sm12x.cutlass_fused_moe(xq, ids, scales, w.w13, w.w2, torch.bfloat16,
                                              w.flashinfer_quant_scales(), **args)


def test_signature_is_flashinfers() -> None:
    """Every parameter of the installed FlashInfer's cutlass_fused_moe, in its order, kind and default; ours may add
    only the keyword-only parameters of newer tested releases (so callers of 0.7.2.post1 and 0.7.4 both work)."""
    fi = pytest.importorskip("flashinfer.fused_moe")
    from flashinfer_sm12x.integrations.flashinfer_cutlass_fused_moe import NEWER_KEYWORDS, RELEASE_DEFAULTS

    ours = inspect.signature(flashinfer_sm12x.cutlass_fused_moe).parameters
    theirs = inspect.signature(fi.cutlass_fused_moe).parameters
    assert [n for n in ours if n in theirs] == list(theirs)
    extra = [n for n in ours if n not in theirs]
    assert set(extra) <= set(NEWER_KEYWORDS), extra
    assert all(ours[n].kind == inspect.Parameter.KEYWORD_ONLY for n in extra)
    for name, p in theirs.items():
        assert ours[name].kind == p.kind, name
        assert (ours[name].default is inspect.Parameter.empty) == (p.default is inspect.Parameter.empty), name
        if name in RELEASE_DEFAULTS:  # the default changed between tested releases: ours is one of them
            assert p.default in RELEASE_DEFAULTS[name] and ours[name].default in RELEASE_DEFAULTS[name], name
        elif p.default is not inspect.Parameter.empty and name not in NEWER_KEYWORDS:
            assert ours[name].default == p.default, name  # ActivationType.Swiglu == 3 (IntEnum)


def test_nvfp4_4over6_is_refused_when_set(model_gemm: None) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(2)
    assert torch.equal(_call(w, xq, xsf, ids, scales, nvfp4_4over6=None), _call(w, xq, xsf, ids, scales))
    with pytest.raises(NotImplementedError, match="nvfp4_4over6"):
        _call(w, xq, xsf, ids, scales, nvfp4_4over6=object())


@pytest.mark.parametrize("num_t", [1, 5, 40])
def test_matches_reference_w4a8(model_gemm: None, num_t: int) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(num_t)
    got = _call(w, xq, xsf, ids, scales)
    ref = gpt_oss_moe_reference(hidden, (ids, scales), **raw, act_quant="mxfp8")
    assert got.shape == (num_t, HP) and got.dtype == torch.bfloat16
    err = float((got[:, :H].double() - ref).abs().max() / ref.abs().max())
    assert err < 1e-2  # bf16 output rounding
    assert float(got[:, H:].abs().max()) == 0.0  # padded hidden columns: zero weights, zero bias


def test_output_buffer_linear_sf_and_fc2_global_scale(model_gemm: None) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(6)
    base = _call(w, xq, xsf, ids, scales, fc2_expert_biases=None)
    linear = unswizzle_sf(xsf, 6, HP // 32, SfLayout.layout_128x4).contiguous()
    out = torch.full((6, HP), float("nan"), dtype=torch.bfloat16)
    got = _call(w, xq, linear, ids, scales, fc2_expert_biases=None, swizzled_input_sf=False, output=out)
    assert got is out and torch.equal(got, base)
    qs = w.flashinfer_quant_scales()
    qs[3] = torch.full((E,), 2.0)  # fc2 global scale: with no fc2 bias the output doubles exactly
    doubled = flashinfer_sm12x.cutlass_fused_moe(
        xq, ids, scales, w.w13, w.w2, torch.bfloat16, qs, fc1_expert_biases=w.w13_bias, input_sf=xsf,
        use_mxfp8_act_scaling=True, swiglu_alpha=torch.full((E,), 1.702), swiglu_beta=torch.ones(E),
        swiglu_limit=torch.full((E,), 7.0))
    assert torch.equal(doubled, base * 2)


def test_plain_swiglu_when_no_swiglu_parameters(model_gemm: None) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(4)
    got = _call(w, xq, xsf, ids, scales, swiglu_alpha=None, swiglu_beta=None, swiglu_limit=None)
    ref = gpt_oss_moe_reference(hidden, (ids, scales), **raw, act_quant="mxfp8", activation="swiglu")
    assert float((got[:, :H].double() - ref).abs().max() / ref.abs().max()) < 1e-2


def test_expert_parallel_rank_keeps_only_its_experts(model_gemm: None) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(8)
    global_ids = ids + E * (torch.arange(8).unsqueeze(1) % 2).int()  # odd tokens' experts live on rank 1
    got = _call(w, xq, xsf, global_ids.contiguous(), scales, ep_size=2, ep_rank=1)
    mine = (global_ids >= E).double()
    ref = gpt_oss_moe_reference(hidden, (ids, scales.double() * mine), **raw, act_quant="mxfp8")
    assert float((got[:, :H].double() - ref).abs().max() / ref.abs().max()) < 1e-2
    assert float(got[0::2].abs().max()) == 0.0  # even tokens routed only to rank 0's experts


def test_bad_input_raises_before_any_gemm(model_gemm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, w, hidden, xq, xsf, ids, scales = _setup(3)

    def no_gemm(*a, **k):
        raise AssertionError("a GEMM ran on bad input")

    monkeypatch.setattr(fm, "grouped_mm_fp4", no_gemm)
    with pytest.raises(ValueError, match="outside"):
        _call(w, xq, xsf, torch.full_like(ids, E), scales)
    with pytest.raises(ValueError, match="outside"):
        _call(w, xq, xsf, torch.full_like(ids, -1), scales)
    with pytest.raises(ValueError, match="input_sf"):
        _call(w, xq, None, ids, scales)
    with pytest.raises(ValueError, match="input_sf must hold"):
        _call(w, xq, xsf[:-4], ids, scales)
    with pytest.raises(ValueError, match="quant_scales"):
        flashinfer_sm12x.cutlass_fused_moe(xq, ids, scales, w.w13, w.w2, torch.bfloat16,
                                           w.flashinfer_quant_scales()[:2], input_sf=xsf, use_mxfp8_act_scaling=True)
    with pytest.raises(ValueError, match="padded hidden"):
        _call(w, xq[:, :H].contiguous(), xsf, ids, scales)
    with pytest.raises(ValueError, match="contiguous"):
        _call(w, xq, xsf, ids.T.contiguous().T, scales)
    with pytest.raises(ValueError, match="one value per local expert"):
        _call(w, xq, xsf, ids, scales, swiglu_alpha=torch.ones(E + 1))
    with pytest.raises(ValueError, match="fc1_expert_weights"):
        flashinfer_sm12x.cutlass_fused_moe(xq, ids, scales, w.w13[:, :-2].contiguous(), w.w2, torch.bfloat16,
                                           w.flashinfer_quant_scales(), input_sf=xsf, use_mxfp8_act_scaling=True)
    with pytest.raises(NotImplementedError, match="W4A8 convention"):
        _call(w, hidden.bfloat16(), xsf, ids, scales)
    with pytest.raises(NotImplementedError, match="W4A8 convention"):
        _call(w, xq, xsf, ids, scales, use_mxfp8_act_scaling=False)
    with pytest.raises(NotImplementedError, match="enable_alltoall"):
        _call(w, xq, xsf, ids, scales, enable_alltoall=True)
    with pytest.raises(NotImplementedError, match="activation_type"):
        _call(w, xq, xsf, ids, scales, activation_type=6)
    with pytest.raises(TypeError, match="float32"):
        _call(w, xq, xsf, ids, scales, swiglu_alpha=torch.ones(E, dtype=torch.float64))
