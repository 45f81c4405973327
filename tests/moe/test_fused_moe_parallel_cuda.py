# SPDX-License-Identifier: Apache-2.0
"""Tensor- and expert-parallel shards of the fused MoE through the kernels (rung 3: on an SM90 GPU the glue runs
natively, the grouped GEMMs through the emulated MMA atom): the sum over shards equals the unsharded layer, as vLLM's
all-reduce forms it. The CPU twin (reference glue, modelled GEMM) is test_fused_moe_parallel.py; the shards are
flashinfer_sm12x/testing/moe_shards.py's, laid out as vLLM's GPT-OSS loader lays them out.

Expert parallelism also checks what the plan does with other ranks' pairs: no row at all (local id -1, dest -1,
counts of local pairs only), so the GEMMs compute 1/ep of the rows, not all of them weighted 0."""

from __future__ import annotations

import importlib

import pytest
import torch

from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights
from flashinfer_sm12x.testing.moe_shards import ep_shard, linear_split, tp_shard

fm = importlib.import_module("flashinfer_sm12x.moe.fused_moe")
pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")
routing = importlib.import_module("flashinfer_sm12x.moe.routing")

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]
H, K = 256, 4
KERNELS_VS_TORCH = 2e-3  # relative L2, kernels against the torch pipeline


def _weights(raw: dict[str, torch.Tensor], act: str):
    return prepare_gpt_oss_weights(**{k: v.cuda() for k, v in raw.items()}, pad_to=128, act=act)


def _run(w, hidden: torch.Tensor, route, out_dtype: torch.dtype, **kw) -> torch.Tensor:
    return fm.fused_moe(hidden, route, w, top_k=K, impl="kernels", out_dtype=out_dtype, **kw)


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tp_shards_through_the_kernels_sum_to_the_full_layer(act: str, tp: int) -> None:
    num_e, inter = 8, 960  # 30 blocks of 32: uneven over 4 and 8 ranks, as GPT-OSS's 90 blocks are
    raw = make_weights(num_e, H, inter)
    hidden, logits = make_inputs(24, H, num_e)
    hidden, logits = hidden.cuda(), logits.cuda()
    full = _run(_weights(raw, act), hidden, logits, torch.float32)
    shards = [_run(_weights(tp_shard(raw, tp, r), act), hidden, logits, torch.float32) for r in range(tp)]
    assert all(float(s.abs().max()) > 0 for s in shards)
    scale = float(full.abs().max())
    # The shards quantize the same 32-blocks of the activation: only the summation order differs.
    assert float((torch.stack(shards).sum(0) - full).abs().max()) <= 1e-5 * scale
    full16 = _run(_weights(raw, act), hidden, logits, torch.bfloat16)
    total16 = torch.stack([_run(_weights(tp_shard(raw, tp, r), act), hidden, logits, torch.bfloat16)
                           for r in range(tp)]).float().sum(0)
    assert float((total16 - full16.float()).abs().max()) <= (tp + 1) * 2.0**-8 * scale


def _local_pairs(ids: torch.Tensor, offset: int, count: int) -> torch.Tensor:
    return (ids >= offset) & (ids < offset + count)


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize(("num_e", "ep", "skew", "num_t", "fused_epilogue"),
                         [(32, 3, False, 1, None), (32, 3, False, 40, None), (32, 3, True, 40, None),
                          (32, 4, False, 300, None), (128, 4, False, 64, None), (32, 3, False, 40, False)])
def test_ep_shards_through_the_kernels_sum_to_the_full_layer(act: str, num_e: int, ep: int, skew: bool,
                                                             num_t: int, fused_epilogue: bool | None) -> None:
    raw = make_weights(num_e, H, 256)
    hidden, logits = make_inputs(num_t, H, num_e)
    if skew:  # every token on experts 0..3 (rank 0): the other ranks receive no pair
        logits = torch.zeros_like(logits)
        logits[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    ids, weights = routing.route(logits, K)
    hidden, ids, weights = hidden.cuda(), ids.cuda(), weights.cuda()
    full = _run(_weights(raw, act), hidden, (ids, weights), torch.float32, fused_epilogue=fused_epilogue)
    outs = []
    for offset, count in linear_split(num_e, ep):
        w = _weights(ep_shard(raw, offset, count), act)
        out = _run(w, hidden, (ids, weights), torch.float32, expert_offset=offset, num_global_experts=num_e,
                   fused_epilogue=fused_epilogue)
        local = _local_pairs(ids, offset, count)
        none_here = ~local.any(1)
        assert torch.equal(out[none_here], torch.zeros_like(out[none_here]))  # no local expert: an exact zero row
        # The same rank through the torch pipeline (the oracle of the kernels' plan; it still computes other ranks'
        # pairs, weighted 0): as close as on one GPU (tests/moe/test_fused_moe_kernels_emulated.py's bound: the
        # activation's exp may round differently and flip a re-quantized code).
        ref = fm.fused_moe(hidden, (ids, weights), w, top_k=K, impl="reference", out_dtype=torch.float32,
                           expert_offset=offset, num_global_experts=num_e)
        if ref.any():
            assert float((out - ref).norm() / ref.norm()) < KERNELS_VS_TORCH
        outs.append(out)
    if skew:
        assert all(not o.any() for o in outs[1:])
    assert float((torch.stack(outs).sum(0) - full).abs().max()) <= 1e-5 * float(full.abs().max())


@pytest.mark.parametrize("fused", [True, False])
def test_ep_plan_gives_foreign_pairs_no_row(fused: bool) -> None:
    """The glue of one EP rank: foreign pairs get id -1, weight 0, rank -1, dest -1 and are not counted; the local
    pairs' rows are those of a plan over the local pairs alone (plan_scatter at decode sizes and plan + scatter)."""
    num_e, num_t, hp, ep_rank, ep = 12, 30, 256, 1, 3
    offset, count = ep_rank * num_e // ep, num_e // ep
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, num_e, (num_t, K), generator=g, dtype=torch.int32).cuda()
    weights = torch.rand(num_t, K, generator=g).cuda()
    plan = pipeline.row_plan(num_t, K, count, "mxfp4", None, None)
    views = pipeline.glue_views(torch.device("cuda"), plan, hp, 128, "mxfp4")
    from flashinfer_sm12x.ops.moe_glue import glue_module

    module = glue_module(torch.device("cuda"), "mxfp4")
    views.workspace[4:].fill_(-7)
    pipeline.plan_and_scatter(module, plan, views, (ids, weights), torch.randn(num_t, hp, device="cuda"), hp,
                              id_base=offset, id_limit=num_e, skip_foreign=True, fused=fused)
    torch.cuda.synchronize()
    mine = _local_pairs(ids, offset, count).reshape(-1)
    local = torch.where(mine, ids.reshape(-1).long() - offset, -1)
    part = lambda name: pipeline.workspace_part(views, plan, name)  # noqa: E731
    assert torch.equal(part("ids").long(), local)
    assert torch.equal(part("weights"), torch.where(mine, weights.reshape(-1), 0.0))
    assert bool((part("rank")[~mine] == -1).all()) and bool((part("dest")[~mine] == -1).all())
    counts = torch.bincount(local[mine], minlength=count)
    assert torch.equal(part("counts").long(), counts)
    tm = plan.tile_m
    padded = (counts + tm - 1) // tm * tm
    start = torch.cumsum(padded, 0) - padded
    assert torch.equal(part("padded_start").long(), start)
    # Local pair j's row: its expert's start plus the number of earlier local pairs of that expert (stable order).
    rows = part("dest").long()[mine]
    experts = local[mine]
    before = torch.stack([(experts[:i] == experts[i]).sum() for i in range(experts.numel())])
    assert torch.equal(rows, start[experts] + before)


def test_ep_cuda_graph_replay_with_foreign_pairs() -> None:
    """One EP rank's forward captured once and replayed over new routing (validate_ids=False, as in a captured
    graph): each replay equals an eager call, tokens without a local expert give zero rows."""
    num_e, num_t, offset, count = 32, 8, 8, 8
    raw = make_weights(num_e, H, 256)
    w = _weights(ep_shard(raw, offset, count), "mxfp4")
    hidden, logits = make_inputs(num_t, H, num_e)
    ids, weights = routing.route(logits, K)
    hidden, ids, weights = hidden.cuda(), ids.cuda(), weights.cuda()
    kw = {"expert_offset": offset, "num_global_experts": num_e, "validate_ids": False}
    fm.fused_moe(hidden, (ids, weights), w, top_k=K, impl="kernels", **kw)  # warm-up: modules, workspace
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fm.fused_moe(hidden, (ids, weights), w, top_k=K, impl="kernels", **kw)
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        ids.copy_(torch.randint(0, num_e, (num_t, K), generator=g, dtype=torch.int32))
        ids[0] = torch.tensor([0, 1, 2, 3], dtype=torch.int32)  # token 0: no local expert
        graph.replay()
        torch.cuda.synchronize()
        eager = fm.fused_moe(hidden, (ids, weights), w, top_k=K, impl="kernels", **kw)
        assert torch.equal(out, eager)
        assert not out[0].any()
