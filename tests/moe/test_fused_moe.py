# SPDX-License-Identifier: Apache-2.0
"""fused_moe's glue (routing, tile padding, expert_of_tile, bias, activation, re-quantization, finalize) on the
CPU against the float64 reference, with the grouped GEMM replaced by a torch model of its contract (dequantize,
then each M tile times its expert's weights). The kernel itself is tested against the same contract on the H100
(tests/emulation/test_grouped_mm_fp4_emulated.py) and end to end there (test_fused_moe_emulated.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, W4A8_CANDIDATES
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model, make_inputs, make_weights

fm = importlib.import_module("flashinfer_sm12x.moe.fused_moe")  # the module (the package exports the function)
pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")
H, INTER = 64, 96


@pytest.fixture
def model_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "grouped_mm_fp4", grouped_gemm_model)


def _prepared(num_e: int, interleaved: bool = True):
    raw = make_weights(num_e, H, INTER)
    w = prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=interleaved, up_first=not interleaved)
    return raw, w


@pytest.mark.parametrize("tactic", CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_t", "num_e", "skew"), [(1, 8, False), (3, 8, False), (20, 8, False), (20, 8, True),
                                                      (5, 16, True)])
def test_fused_moe_glue_matches_reference(model_gemm: None, tactic, num_t: int, num_e: int, skew: bool) -> None:
    raw, w = _prepared(num_e)
    hidden, logits = make_inputs(num_t, H, num_e)
    if skew:  # every token prefers experts 0..3 in the same order: the rest get no tokens
        logits = torch.zeros_like(logits)
        logits[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    got = fm.fused_moe(hidden, logits, w, top_k=4, tactic=tactic, out_dtype=torch.float32)
    ref = gpt_oss_moe_reference(hidden, logits, **raw, top_k=4, act_quant="mxfp4")
    assert got.shape == (num_t, H) and got.dtype == torch.float32
    # fp32 glue vs the fp64 reference: equal up to fp32 rounding (a re-quantization tie could still flip).
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("tactic", W4A8_CANDIDATES, ids=lambda t: t.name)
@pytest.mark.parametrize(("num_t", "num_e", "skew"), [(1, 8, False), (20, 8, False), (20, 8, True)])
def test_fused_moe_w4a8_glue_matches_reference(model_gemm: None, tactic, num_t: int, num_e: int, skew: bool) -> None:
    raw = make_weights(num_e, H, INTER)
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8")
    hidden, logits = make_inputs(num_t, H, num_e)
    if skew:
        logits = torch.zeros_like(logits)
        logits[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    got = fm.fused_moe(hidden, logits, w, top_k=4, tactic=tactic, out_dtype=torch.float32)
    ref = gpt_oss_moe_reference(hidden, logits, **raw, top_k=4, act_quant="mxfp8")
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-4
    # ...and it is not the W4A4 result (the activations really went through MXFP8).
    ref4 = gpt_oss_moe_reference(hidden, logits, **raw, top_k=4, act_quant="mxfp4")
    assert float((got.double() - ref4).abs().max() / ref4.abs().max()) > 1e-3


def test_fused_moe_halves_layout_and_precomputed_routing(model_gemm: None) -> None:
    raw, w = _prepared(8, interleaved=False)
    hidden, _ = make_inputs(6, H, 8)
    ids = torch.tensor([[0, 1, 2, 3]] * 3 + [[7, 6, 5, 4]] * 3, dtype=torch.int32)
    weights = torch.full((6, 4), 0.25)
    got = fm.fused_moe(hidden, (ids, weights), w, tactic=CANDIDATES[0], validate_ids=False, out_dtype=torch.float32)
    ref = gpt_oss_moe_reference(hidden, (ids, weights), **raw, act_quant="mxfp4")
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-4


def test_tile_layout_bound_holds_for_skewed_counts() -> None:
    offsets = torch.tensor([0, 0, 130, 131, 131, 200])  # counts 0, 130, 1, 0, 69
    rows, tm = 200, 64
    bound = -(-(rows + min(5, rows) * (tm - 1)) // tm) * tm
    start, expert_of_tile = pipeline.tile_layout(offsets, bound, tm)
    assert start.tolist() == [0, 0, 192, 256, 256]
    assert expert_of_tile.tolist()[:6] == [1, 1, 1, 2, 4, 4]
    assert expert_of_tile.numel() == bound // tm and int(expert_of_tile.max()) <= 4


def test_bad_input_is_rejected_before_any_gemm(model_gemm: None) -> None:
    raw, w = _prepared(8)
    hidden, logits = make_inputs(2, H, 8)
    with pytest.raises(ValueError, match="outside"):
        fm.fused_moe(hidden, (torch.tensor([[0, 9]] * 2), torch.ones(2, 2)), w)
    with pytest.raises(ValueError, match="outside"):
        fm.fused_moe(hidden, (torch.tensor([[0, -1]] * 2), torch.ones(2, 2)), w)
    with pytest.raises(ValueError, match="top_k"):
        fm.fused_moe(hidden, logits, w, top_k=9)
    with pytest.raises(ValueError, match="exceeds"):
        fm.fused_moe(hidden, (torch.zeros(2, 9, dtype=torch.int32), torch.ones(2, 9)), w)
    with pytest.raises(ValueError, match=r"\[T, 64\]"):
        fm.fused_moe(hidden[:, :32], logits, w, top_k=4)
    with pytest.raises(ValueError, match="contiguous"):
        fm.fused_moe(torch.zeros(H, 2, dtype=torch.bfloat16).T, logits, w, top_k=4)
    with pytest.raises(TypeError, match="prepare_gpt_oss_weights"):
        fm.fused_moe(hidden, logits, raw, top_k=4)
    w8 = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8")
    with pytest.raises(ValueError, match="tactic for mxfp8_mxfp4"):  # a W4A4 tile for W4A8 weights
        fm.fused_moe(hidden, logits, w8, top_k=4, tactic=CANDIDATES[0])


def test_zero_tokens_launch_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gemm(*a, **k):
        raise AssertionError("a GEMM ran for zero tokens")

    monkeypatch.setattr(pipeline, "grouped_mm_fp4", no_gemm)
    _, w = _prepared(8)
    out = fm.fused_moe(torch.zeros(0, H), (torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 4)), w)
    assert out.shape == (0, H) and out.dtype == torch.bfloat16
