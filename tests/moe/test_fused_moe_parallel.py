# SPDX-License-Identifier: Apache-2.0
"""Tensor- and expert-parallel shards of the fused MoE on the CPU (reference glue, the grouped GEMM replaced by the
torch model of its contract): the sum over shards equals the unsharded layer, as vLLM's all-reduce forms it.

The shards (flashinfer_sm12x/testing/moe_shards.py, shared with scripts/multi_gpu.py) follow vLLM's GPT-OSS MXFP4
loader: TP splits I in whole 32-blocks with the fc2 bias on TP rank 0 only; EP gives each rank a contiguous slice of
the experts (uneven splits included), addressed by global routing ids."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model, make_inputs, make_weights
from flashinfer_sm12x.testing.moe_shards import ep_shard, linear_split, tp_shard

fm = importlib.import_module("flashinfer_sm12x.moe.fused_moe")
pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # where the MoE calls its grouped GEMM
routing = importlib.import_module("flashinfer_sm12x.moe.routing")
H = 64


@pytest.fixture(autouse=True)
def model_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "grouped_mm_fp4", grouped_gemm_model)


def _run(raw: dict[str, torch.Tensor], hidden: torch.Tensor, routing, act: str, out_dtype: torch.dtype,
         **kw: int) -> torch.Tensor:
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act=act)
    return fm.fused_moe(hidden, routing, w, top_k=4, impl="reference", out_dtype=out_dtype, **kw)


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_shards_sum_to_the_full_layer(act: str, tp: int) -> None:
    # I = 30 blocks of 32: tp=4 splits 8/8/8/6 blocks and tp=8 4x7 + 2, uneven like GPT-OSS's 90 blocks over 4 or 8.
    num_e, inter = 4, 960
    raw = make_weights(num_e, H, inter)
    hidden, logits = make_inputs(12, H, num_e)
    full = _run(raw, hidden, logits, act, torch.float32)
    shards = [_run(tp_shard(raw, tp, r), hidden, logits, act, torch.float32) for r in range(tp)]
    assert all(float(s.abs().max()) > 0 for s in shards)  # every rank contributes
    total = torch.stack(shards).sum(0)
    scale = float(full.abs().max())
    # float32 outputs: the shards see the same 32-blocks (quantization included), so only summation order differs.
    assert float((total - full).abs().max()) <= 1e-5 * scale
    # bf16 outputs (what vLLM all-reduces): within the rounding of tp + 1 bf16 values.
    full16 = _run(raw, hidden, logits, act, torch.bfloat16)
    total16 = torch.stack([_run(tp_shard(raw, tp, r), hidden, logits, act, torch.bfloat16)
                           for r in range(tp)]).float().sum(0)
    assert float((total16 - full16.float()).abs().max()) <= (tp + 1) * 2.0**-8 * scale
    # The fc2 bias loaded on every rank instead of rank 0 only adds (tp - 1) routed biases per token: exactly the
    # error the rank-0-only load avoids (so the checks above can fail).
    every_rank_bias = [dict(tp_shard(raw, tp, r), w2_bias=raw["w2_bias"]) for r in range(tp)]
    wrong = torch.stack([_run(s, hidden, logits, act, torch.float32) for s in every_rank_bias]).sum(0)
    ids, weights = routing.route(logits, 4)
    routed_bias = (raw["w2_bias"].float()[ids.long()] * weights.unsqueeze(2)).sum(1)
    assert float(routed_bias.abs().max()) > 1e-3 * scale
    assert float((wrong - full - (tp - 1) * routed_bias).abs().max()) <= 1e-5 * tp * scale


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize(("num_e", "ep", "skew"), [(32, 3, False), (32, 3, True), (32, 4, False), (8, 2, True)])
def test_ep_shards_sum_to_the_full_layer(act: str, num_e: int, ep: int, skew: bool) -> None:
    inter = 128
    raw = make_weights(num_e, H, inter)
    hidden, logits = make_inputs(16, H, num_e)
    if skew:  # every token picks experts 0..3 (all on rank 0): the other ranks receive no pair at all
        logits = torch.zeros_like(logits)
        logits[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    ids, weights = routing.route(logits, 4)
    full = _run(raw, hidden, (ids, weights), act, torch.float32)
    outs = []
    for offset, count in linear_split(num_e, ep):
        out = _run(ep_shard(raw, offset, count), hidden, (ids, weights), act, torch.float32,
                   expert_offset=offset, num_global_experts=num_e)
        local = ((ids >= offset) & (ids < offset + count)).any(1)
        assert torch.equal(out[~local], torch.zeros_like(out[~local]))  # no local expert: an exact zero row
        outs.append(out)
    if skew:
        assert all(not o.any() for o in outs[1:])
    # Each (token, expert) pair, fc2 bias included, is computed on exactly one rank.
    assert float((torch.stack(outs).sum(0) - full).abs().max()) <= 1e-5 * float(full.abs().max())


def test_ep_router_logits_are_global_and_tokens_may_be_zero() -> None:
    raw = make_weights(32, H, 128)
    hidden, logits = make_inputs(8, H, 32)
    full = _run(raw, hidden, logits, "mxfp8", torch.float32)
    outs = [_run(ep_shard(raw, o, n), hidden, logits, "mxfp8", torch.float32, expert_offset=o,
                 num_global_experts=32) for o, n in linear_split(32, 3)]
    assert float((sum(outs) - full).abs().max()) <= 1e-5 * float(full.abs().max())
    empty = _run(ep_shard(raw, 10, 10), hidden[:0], (torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 4)),
                 "mxfp8", torch.float32, expert_offset=10, num_global_experts=32)
    assert empty.shape == (0, H)


def test_ep_bad_slices_and_ids_are_rejected() -> None:
    raw = ep_shard(make_weights(32, H, 128), 10, 10)
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8")
    hidden, _ = make_inputs(2, H, 32)
    ids, tw = torch.tensor([[0, 31, 12, 5]] * 2, dtype=torch.int32), torch.full((2, 4), 0.25)
    for offset, num_global, err in ((-1, 32, ValueError), (25, 32, ValueError), (10, 15, ValueError),
                                    (1.5, 32, TypeError), (10, "32", TypeError), (True, 32, TypeError)):
        with pytest.raises(err):
            fm.fused_moe(hidden, (ids, tw), w, impl="reference", expert_offset=offset, num_global_experts=num_global)
    with pytest.raises(ValueError, match=r"outside \[0, 32\)"):
        fm.fused_moe(hidden, (ids.clone().fill_(32), tw), w, impl="reference", expert_offset=10,
                     num_global_experts=32)
    with pytest.raises(ValueError, match="CUDA"):  # the kernel path serves EP too, on CUDA tensors
        fm.fused_moe(hidden, (ids, tw), w, impl="kernels", expert_offset=10, num_global_experts=32)
    # validate_ids=False (graph capture): out-of-range ids are clamped, never an out-of-bounds access.
    out = fm.fused_moe(hidden, (ids.clone().fill_(40), tw), w, impl="reference", validate_ids=False,
                       expert_offset=10, num_global_experts=32, out_dtype=torch.float32)
    assert out.shape == (2, H) and not out.any()  # clamped to 31, not local to [10, 20)
