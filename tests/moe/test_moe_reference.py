# SPDX-License-Identifier: Apache-2.0
"""gpt_oss_moe_reference against the independent per-token loop in moe_cases.py (CPU, tiny shapes)."""

from __future__ import annotations

import math

import pytest
import torch

from flashinfer_sm12x.moe import gpt_oss_moe_reference
from flashinfer_sm12x.moe.reference import _activation
from flashinfer_sm12x.testing.moe_cases import loop_moe, loop_route, make_inputs, make_weights

E, TOPK, T, H, INTER = 4, 2, 5, 64, 64


def _args(w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return w["w13"], w["w13_scale"], w["w13_bias"], w["w2"], w["w2_scale"], w["w2_bias"]


@pytest.mark.parametrize("activation", ["swiglu_oai", "swiglu"])
@pytest.mark.parametrize("layout", ["interleaved", "gate_up", "up_gate"])
def test_reference_matches_per_token_loop(activation: str, layout: str) -> None:
    w = make_weights(E, H, INTER)
    hidden, logits = make_inputs(T, H, E)
    interleaved, up_first = layout == "interleaved", layout == "up_gate"
    ref = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK, activation=activation, interleaved=interleaved,
                                up_first=up_first)
    ids, weights = loop_route(logits, TOPK)
    want = loop_moe(hidden, ids, weights, w, activation, interleaved, up_first)
    assert ref.dtype == torch.float64 and ref.shape == (T, H)
    torch.testing.assert_close(ref, want, rtol=1e-12, atol=1e-12)
    # The limit clamp must actually be exercised by these inputs for swiglu_oai to be tested.
    if activation == "swiglu_oai":
        big = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK, limit=None)
        assert not torch.allclose(big, gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK))


@pytest.mark.parametrize("act_quant", ["mxfp4", "mxfp8"])
def test_reference_act_quant_matches_loop(act_quant: str) -> None:
    w = make_weights(E, H, INTER, seed=3)
    hidden, logits = make_inputs(T, H, E, seed=4)
    ref = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK, act_quant=act_quant)
    ids, weights = loop_route(logits, TOPK)
    want = loop_moe(hidden, ids, weights, w, "swiglu_oai", True, act_quant=act_quant)
    torch.testing.assert_close(ref, want, rtol=1e-9, atol=1e-9)


def test_act_quant_error_shrinks_with_precision() -> None:
    w = make_weights(E, H, INTER, seed=5)
    hidden, logits = make_inputs(16, H, E, seed=6)
    exact = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK)
    err = {}
    for fmt in ("mxfp4", "mxfp8"):
        out = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK, act_quant=fmt)
        err[fmt] = float((out - exact).norm() / exact.norm())
    assert 0 < err["mxfp8"] < err["mxfp4"] < 0.5


def test_routing_tuple_equals_logits_and_ties_take_lower_ids() -> None:
    w = make_weights(E, H, INTER, seed=7)
    hidden, _ = make_inputs(T, H, E)
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 3.0, -1.0, 3.0],
                           [5.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    ids, weights = loop_route(logits, TOPK)
    assert ids == [[1, 2], [0, 1], [1, 3], [0, 3], [0, 1]]
    via_logits = gpt_oss_moe_reference(hidden, logits, *_args(w), TOPK)
    via_tuple = gpt_oss_moe_reference(hidden, (torch.tensor(ids), torch.tensor(weights)), *_args(w))
    torch.testing.assert_close(via_logits, via_tuple, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(via_logits, loop_moe(hidden, ids, weights, w, "swiglu_oai", True))


def test_activation_formulas() -> None:
    # Interleaved pairs (gate, up): clamp on both sides, beta shift, alpha inside the sigmoid.
    h = torch.tensor([[10.0, -9.0, -2.0, 0.5, 1.0, 8.0, 0.0, 3.0]], dtype=torch.float64)
    got = _activation(h, "swiglu_oai", True, False, 1.702, 1.0, 7.0)[0].tolist()

    def oai(g: float, u: float) -> float:
        g, u = min(g, 7.0), max(min(u, 7.0), -7.0)
        return (u + 1.0) * g / (1.0 + math.exp(-1.702 * g))

    want = [oai(10.0, -9.0), oai(-2.0, 0.5), oai(1.0, 8.0), oai(0.0, 3.0)]
    assert got == pytest.approx(want, rel=1e-14)
    assert want[3] == 0.0  # a zero gate (padding) gives 0 whatever up is
    silu = _activation(h, "swiglu", False, False, 1.702, 1.0, 7.0)[0].tolist()
    assert silu == pytest.approx([g / (1 + math.exp(-g)) * u for g, u in zip([10.0, -9.0, -2.0, 0.5],
                                                                            [1.0, 8.0, 0.0, 3.0], strict=True)])


def test_experts_without_tokens_and_empty_batch() -> None:
    w = make_weights(E, H, INTER, seed=8)
    hidden, _ = make_inputs(3, H, E)
    ids = torch.tensor([[2, 0], [2, 0], [0, 2]])
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    got = gpt_oss_moe_reference(hidden, (ids, weights), *_args(w))
    torch.testing.assert_close(got, loop_moe(hidden, ids.tolist(), weights.tolist(), w, "swiglu_oai", True))
    empty = gpt_oss_moe_reference(hidden[:0], torch.zeros(0, E), *_args(w), TOPK, act_quant="mxfp4")
    assert empty.shape == (0, H)


def test_no_bias_and_out_dtype() -> None:
    w = make_weights(E, H, INTER, seed=9)
    hidden, logits = make_inputs(T, H, E)
    got = gpt_oss_moe_reference(hidden, logits, w["w13"], w["w13_scale"], None, w["w2"], w["w2_scale"], None, TOPK,
                                out_dtype=torch.bfloat16)
    w0 = dict(w, w13_bias=torch.zeros_like(w["w13_bias"]), w2_bias=torch.zeros_like(w["w2_bias"]))
    ids, weights = loop_route(logits, TOPK)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, loop_moe(hidden, ids, weights, w0, "swiglu_oai", True).bfloat16())


def _bad_cases() -> list[tuple[str, dict, type[Exception]]]:
    return [
        ("w13 float", {"w13": torch.zeros(E, 2 * INTER, H // 2)}, TypeError),
        ("scale int32", {"w13_scale": torch.zeros(E, 2 * INTER, H // 32, dtype=torch.int32)}, TypeError),
        ("hidden int", {"hidden": torch.zeros(T, H, dtype=torch.int32)}, TypeError),
        ("hidden not a tensor", {"hidden": [[0.0] * H]}, TypeError),
        ("activation", {"activation": "gelu"}, ValueError),
        ("act_quant", {"act_quant": "nvfp4"}, ValueError),
        ("scale shape", {"w13_scale": torch.zeros(E, 2 * INTER, H // 16, dtype=torch.uint8)}, ValueError),
        ("w2 rows", {"w2": torch.zeros(E, H, INTER, dtype=torch.uint8)}, ValueError),
        ("hidden width", {"hidden": torch.zeros(T, H + 32)}, ValueError),
        ("bias shape", {"w13_bias": torch.zeros(E, INTER)}, ValueError),
        ("top_k > E", {"top_k": E + 1}, ValueError),
        ("top_k 0", {"top_k": 0}, ValueError),
        ("logits shape", {"routing": torch.zeros(T, E + 1)}, ValueError),
        ("logits int", {"routing": torch.zeros(T, E, dtype=torch.int64)}, TypeError),
        ("ids out of range", {"routing": (torch.full((T, 2), E), torch.ones(T, 2)), "top_k": None}, ValueError),
        ("negative ids", {"routing": (torch.full((T, 2), -1), torch.ones(T, 2)), "top_k": None}, ValueError),
        ("ids float", {"routing": (torch.zeros(T, 2), torch.ones(T, 2)), "top_k": None}, TypeError),
        ("ids/top_k", {"routing": (torch.zeros(T, 2, dtype=torch.int64), torch.ones(T, 2)), "top_k": 3}, ValueError),
    ]


@pytest.mark.parametrize(("what", "override", "exc"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_reference_rejects_bad_inputs(what: str, override: dict, exc: type[Exception]) -> None:
    w = make_weights(E, H, INTER)
    hidden, logits = make_inputs(T, H, E)
    kw = {"hidden": hidden, "routing": logits, **w, "top_k": TOPK}
    kw.update(override)
    with pytest.raises(exc):
        gpt_oss_moe_reference(**kw)
