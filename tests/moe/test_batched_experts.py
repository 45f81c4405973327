# SPDX-License-Identifier: Apache-2.0
"""The experts on per-expert batched rows (`moe.batched.batched_experts`, vLLM's BatchedExperts layout) on the CPU:
the reference implementation, the grouped GEMM replaced by the torch model of its contract. Oracle: `fused_moe` on
each expert's valid rows routed to that expert alone with weight 1 (top_k = 1: the unweighted expert output, fc2 bias
included), which plans its rows through the routing path the batched layout skips. The kernels' twin is
test_batched_experts_cuda.py."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashinfer_sm12x.moe.batched import batched_experts
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model, make_weights

pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # where run_experts calls its grouped GEMM
NUM_E, H, INTER = 4, 256, 256


@pytest.fixture(autouse=True)
def model_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "grouped_mm_fp4", grouped_gemm_model)


def _rows(m: int, seed: int = 5, h: int = H) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_E, m, h, generator=g).bfloat16()


def _oracle(x: torch.Tensor, counts: list[int], w) -> list[torch.Tensor]:
    """Each expert's valid rows through fused_moe, routed to that expert alone (weight 1): float32 [c, H]."""
    outs = []
    for e, c in enumerate(counts):
        ids = torch.full((c, 1), e, dtype=torch.int32)
        outs.append(fused_moe(x[e, :c].contiguous(), (ids, torch.ones(c, 1)), w, impl="reference",
                              out_dtype=torch.float32))
    return outs


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("counts", [[3, 0, 7, 1], [9, 9, 9, 9], [0, 0, 0, 0], [0, 9, 0, 2]])
def test_valid_rows_equal_the_routed_experts(act: str, counts: list[int]) -> None:
    """Zero and full experts (count = M) included; rows past the counts are zeros (the reference's definition)."""
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, H, INTER), act=act)
    x = _rows(9)
    got = batched_experts(x, torch.tensor(counts, dtype=torch.int32), w, out_dtype=torch.float32, impl="reference")
    assert got.shape == (NUM_E, 9, H) and got.dtype == torch.float32
    for e, (c, ref) in enumerate(zip(counts, _oracle(x, counts, w), strict=True)):
        if c:
            scale = float(ref.abs().max())
            assert float((got[e, :c] - ref).abs().max()) <= 1e-5 * scale, e
        assert not got[e, c:].any()


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
def test_stale_rows_past_the_counts_do_not_leak(act: str) -> None:
    """DeepEP low-latency leaves stale rows past each expert's count: huge values and NaN there change nothing."""
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, H, INTER), act=act)
    counts = torch.tensor([2, 5, 0, 3], dtype=torch.int64)
    x = _rows(6)
    clean = batched_experts(x, counts, w, impl="reference")
    dirty = x.clone()
    for e, c in enumerate(counts.tolist()):
        dirty[e, c:] = float("nan") if e % 2 else 3.0e38
    assert torch.equal(batched_experts(dirty, counts, w, impl="reference"), clean)


def test_counts_per_global_expert_and_padded_hidden() -> None:
    """vLLM's BatchedPrepareAndFinalize hands over one count per global expert (the first E are this rank's);
    counts above M are clamped; rows of the padded hidden size (H = 192 padded to 256) are accepted."""
    raw = make_weights(NUM_E, 192, INTER)
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8")
    assert w.hidden_size == 192 and w.hidden_size_padded == 256
    x = _rows(4, h=192)
    counts = torch.tensor([1, 4, 2, 99, 7, 7, 7, 7], dtype=torch.int32)  # 8 global experts; 99 clamps to M = 4
    got = batched_experts(x, counts, w, out_dtype=torch.float32, impl="reference")
    for e, (c, ref) in enumerate(zip([1, 4, 2, 4], _oracle(x, [1, 4, 2, 4], w), strict=True)):
        assert float((got[e, :c] - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), e
    padded = torch.zeros(NUM_E, 4, 256, dtype=torch.bfloat16)
    padded[:, :, :192] = x
    got_p = batched_experts(padded, counts, w, out_dtype=torch.float32, impl="reference")
    assert got_p.shape == (NUM_E, 4, 256)
    assert torch.equal(got_p[:, :, :192], got) and not got_p[:, :, 192:].any()


def test_into_out_and_empty() -> None:
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, H, INTER), act="mxfp8")
    x = _rows(3)
    out = torch.full((NUM_E, 3, H), 7.0, dtype=torch.bfloat16)
    counts = torch.tensor([3, 1, 0, 2], dtype=torch.int32)
    assert batched_experts(x, counts, w, impl="reference", out=out) is out
    assert torch.equal(out, batched_experts(x, counts, w, impl="reference"))
    empty = batched_experts(x[:, :0], counts, w, impl="reference")
    assert empty.shape == (NUM_E, 0, H)


def test_bad_input_gives_typed_errors() -> None:
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, H, INTER), act="mxfp8")
    x, counts = _rows(3), torch.tensor([1, 2, 3, 0], dtype=torch.int32)
    cases = [
        ((x, counts, make_weights(NUM_E, H, INTER)), {}, TypeError, "prepare_gpt_oss_weights"),
        ((x[0], counts, w), {}, ValueError, "3-D"),
        ((x[:3], counts, w), {}, ValueError, r"\[4, M, 256\]"),
        ((x[:, :, :128].contiguous(), counts, w), {}, ValueError, r"\[4, M, 256\]"),
        ((x.int(), counts, w), {}, TypeError, "x must have dtype"),
        ((x.transpose(1, 2).contiguous().transpose(1, 2), counts, w), {}, ValueError, "contiguous"),
        ((x, counts.float(), w), {}, TypeError, "expert_num_tokens must have dtype"),
        ((x, counts[:3], w), {}, ValueError, "at least one count per local expert"),
        ((x, counts.view(2, 2), w), {}, ValueError, "1-D"),
        ((x, counts, w), {"out_dtype": torch.int32}, TypeError, "out_dtype"),
        ((x, counts, w), {"impl": "fast"}, ValueError, "impl"),
        ((x, counts, w), {"impl": "kernels"}, ValueError, "CUDA"),
        ((x, counts, w), {"out": torch.empty(NUM_E, 2, H, dtype=torch.bfloat16)}, ValueError, "out must have shape"),
        ((x, counts, w), {"out": torch.empty(NUM_E, 3, H)}, TypeError, "out must have dtype"),
    ]
    for args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            batched_experts(*args, **kw)


def _gemm_with_rows(a, a_sf, b, b_sf, expert_of_tile, tactic, out=None, out_dtype=torch.bfloat16, *, fmt=None,
                    expert_rows=None, **kw):
    """grouped_mm_fp4's contract with `expert_rows`: A's rows outside each expert's counted rows are not read
    (their output rows are products of zero rows), modelled by zeroing those output rows. float32 out, as
    grouped_gemm_model (the kernel writes bf16): the comparison isolates the wiring from bf16 rounding."""
    padded_start, counts = expert_rows
    assert padded_start.dtype == counts.dtype == torch.int32 and padded_start.shape == counts.shape == (b.shape[0],)
    assert fmt in ("mxfp4", "mxfp8_mxfp4") and expert_of_tile.dtype == torch.int32
    y = grouped_gemm_model(a, a_sf, b, b_sf, expert_of_tile, tactic, fmt=fmt)
    row = torch.arange(y.shape[0])
    e = expert_of_tile.long().repeat_interleave(tactic.tile_m)
    counted = (row >= padded_start.long()[e]) & (row < padded_start.long()[e] + counts.long()[e])
    return torch.where(counted.unsqueeze(1), y, 0.0), counted


def _gemm2_model(*args, **kw):
    return _gemm_with_rows(*args, **kw)[0]


def _swiglu_quantize_model(a, a_sf, b, b_sf, expert_of_tile, tactic, *, bias=None, activation="swiglu_oai",
                           alpha=1.702, beta=1.0, limit=7.0, g1=None, enable_pdl=True, fmt=None, expert_rows=None):
    """The fused GEMM1's documented contract: A @ B^T (float32 here, bf16 in the kernel), + bias, swiglu_oai on
    interleaved gate/up, quantized; only the counted rows written (the others: zeros here, never read by GEMM2)."""
    assert activation == "swiglu_oai" and g1 is None and expert_rows is not None
    h, counted = _gemm_with_rows(a, a_sf, b, b_sf, expert_of_tile, tactic, fmt=fmt, expert_rows=expert_rows)
    if bias is not None:
        h += bias.float().index_select(0, expert_of_tile.long().repeat_interleave(tactic.tile_m))
    act = pipeline.swiglu(h, "interleaved", b.shape[1] // 2, True, alpha, beta, limit)
    return pipeline._quantize(torch.where(counted.unsqueeze(1), act, 0.0).contiguous(), "mxfp4" if fmt == "mxfp4"
                              else "mxfp8")


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
def test_kernel_path_wiring_with_modelled_ops(monkeypatch: pytest.MonkeyPatch, act: str) -> None:
    """The kernels' path on the CPU, each op replaced by a model of its documented contract: the operands, tables and
    epilogue arguments it hands the ops, the fc2 bias after GEMM2; stale rows (NaN) past the counts never reach a
    counted row. Equal to the reference (the same modelled GEMMs in float32) up to summation order."""
    from flashinfer_sm12x.moe import batched
    from flashinfer_sm12x.ops import grouped_mm_fp4 as ops

    monkeypatch.setattr(ops, "grouped_mm_fp4", _gemm2_model)
    monkeypatch.setattr(ops, "grouped_mm_fp4_swiglu_quantize", _swiglu_quantize_model)
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, H, INTER), act=act)
    e = pipeline.Experts.of(w, True, batched._ALPHA, batched._BETA, batched._LIMIT)
    t1, t2 = pipeline._checked_tactics(None, NUM_E * 9, NUM_E, e.gemm_format, None, None, e.hidden_padded,
                                       e.inter_padded)
    assert pipeline.fuses_activation(e, t1)
    counts = [3, 0, 9, 1]
    x = _rows(9)
    ref = batched_experts(x, torch.tensor(counts), w, impl="reference", out_dtype=torch.float32)
    for i, c in enumerate(counts):
        x[i, c:] = float("nan")
    got = batched._forward(x, torch.tensor(counts), e, t1, t2, "kernels", torch.empty(NUM_E, 9, H))
    for i, c in enumerate(counts):
        if c:
            scale = float(ref[i, :c].abs().max())
            assert torch.isfinite(got[i, :c]).all()
            assert float((got[i, :c] - ref[i, :c]).abs().max()) <= 1e-5 * scale, i
