# SPDX-License-Identifier: Apache-2.0
"""plan_scatter (plan + scatter in one kernel, decode sizes) on a CUDA GPU (a native SM90 kernel on an H200, with
FLASHINFER_SM12X_EMULATE=1 so the device maps to the sm_90a build).

Both ways through `plan_and_scatter` (fused=True: one kernel; fused=False: plan then scatter) must leave the same
workspace (ids, weights, ranks, dest, counts, padded starts, expert_of_tile, chunk bases) and the same bytes in the
quantized rows and scales, and both must match the torch oracle (moe/routing.py's route, fused_moe's row plan, the
torch quantizers): across T up to the kernel's limit and past the dispatch threshold, E in {32, 128}, both tile
heights, logits (float32 / bfloat16 / float16) and precomputed ids (int32 / int64 with float32 / bfloat16 / float16
weights, expert-parallel remapping), skewed routing, ties, the pre-quantized MXFP8 copy and CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.formats import SfLayout, swizzle_sf, unswizzle_sf
from flashinfer_sm12x.formats.quantize import mxfp4_quantize, mxfp8_quantize
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES
from flashinfer_sm12x.moe import pipeline
from flashinfer_sm12x.moe.pipeline import glue_views, plan_and_scatter, plan_expert_rows, row_plan, workspace_part
from flashinfer_sm12x.moe.routing import route
from flashinfer_sm12x.ops.moe_glue import glue_module

Plan, Views = pipeline.RowPlan, pipeline.GlueViews  # the pipeline's types in annotations

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("emulate")]
K = 4
STALE = 0xAB  # what the data buffers hold before a run: padding rows must keep it



def _setup(num_t: int, num_e: int, act: str, hp: int, tile: int = 0, k: int = K) -> tuple[Plan, Views]:
    plan = row_plan(num_t, k, num_e, "mxfp4", CANDIDATES[tile], None)  # CANDIDATES: tile heights 64 and 128
    return plan, glue_views(torch.device("cuda"), plan, hp, 128, act)


def _logits(num_t: int, num_e: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties, which must go to the lower expert id.
    return (torch.randint(-8, 8, (num_t, num_e), generator=g).float() / 4).to(dtype).cuda()


def _hidden(num_t: int, h: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    x = torch.randn(num_t, h, generator=torch.Generator().manual_seed(seed)) * 3
    x[0, :7] = 0.0  # a partly zero block
    return x.to(dtype).cuda()


def _run(module: object, plan: Plan, views: Views, routing, hidden: torch.Tensor, hp: int, fused: bool,
         **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One way through plan_and_scatter over stale buffers; returns (workspace, x, x_sf) copies."""
    views.workspace[1] = 0  # the error flag (the done counter, [0], must stay 0)
    views.workspace[4:].fill_(-7)
    views.x.fill_(STALE)
    views.x_sf.fill_(STALE)
    plan_and_scatter(module, plan, views, routing, hidden, hp, fused=fused, **kw)
    torch.cuda.synchronize()
    return views.workspace.clone(), views.x.clone(), views.x_sf.clone()


def _both_ways(module: object, plan: Plan, views: Views, routing, hidden: torch.Tensor, hp: int,
               **kw) -> None:
    """The fused kernel and the two kernels leave identical workspaces and buffers (views hold the fused run)."""
    two = _run(module, plan, views, routing, hidden, hp, False, **kw)
    one = _run(module, plan, views, routing, hidden, hp, True, **kw)
    for name, a, b in zip(("workspace", "x", "x_sf"), one, two, strict=True):
        assert torch.equal(a, b), f"{name} differs between plan_scatter and plan + scatter"


def _check_against_oracle(plan: Plan, views: Views, ids: torch.Tensor, hidden: torch.Tensor, hp: int,
                          act: str) -> None:
    """dest / counts / expert_of_tile against fused_moe's torch row plan; routed rows and every scale byte against
    the torch quantizer; padding rows' data untouched."""
    r = plan_expert_rows(ids, plan.num_experts, "mxfp4", plan.tactic, ids.device, validate_ids=False)
    assert torch.equal(workspace_part(views, plan, "dest").long(), r.dest[r.inverse.long()].long())
    counts = torch.bincount(ids.reshape(-1).long(), minlength=plan.num_experts)
    assert torch.equal(workspace_part(views, plan, "counts").long(), counts)
    assert torch.equal(views.expert_of_tile, r.expert_of_tile)
    x = torch.zeros(plan.bound, hp, dtype=torch.float32, device="cuda")
    x[r.dest, : hidden.shape[1]] = hidden.index_select(0, r.token_of_row.long()).float()
    want_q, want_sf = mxfp4_quantize(x) if act == "mxfp4" else mxfp8_quantize(x, True, 32)
    routed = r.dest.long()
    assert torch.equal(views.x[routed], want_q.view(torch.uint8).reshape(views.x.shape)[routed])
    padding = torch.ones(plan.bound, dtype=torch.bool, device="cuda")
    padding[routed] = False
    assert bool((views.x[padding] == STALE).all())
    assert torch.equal(views.x_sf, want_sf.view(torch.uint8).reshape(-1))


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("tile", [0, 1])
@pytest.mark.parametrize("num_e", [32, 128])
@pytest.mark.parametrize(("num_t", "dtype"), [(1, torch.float32), (2, torch.bfloat16), (7, torch.float16),
                                              (16, torch.float32), (64, torch.bfloat16), (65, torch.float32),
                                              (128, torch.float32)])
def test_from_logits_fused_equals_two_kernels_and_the_oracle(act: str, tile: int, num_e: int, num_t: int,
                                                             dtype: torch.dtype) -> None:
    h, hp = 2880, 2944
    plan, views = _setup(num_t, num_e, act, hp, tile)
    assert plan.fused_plan_scatter == (num_t <= 32)  # the dispatch threshold at GPT-OSS shapes
    module = glue_module(torch.device("cuda"), act)
    logits, hidden = _logits(num_t, num_e, dtype, seed=num_t), _hidden(num_t, h, torch.bfloat16)
    _both_ways(module, plan, views, logits, hidden, hp)
    ids, weights = route(logits, K)
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, K), ids)
    torch.testing.assert_close(workspace_part(views, plan, "weights").view(num_t, K), weights, rtol=2.5e-7, atol=0)
    assert bool((workspace_part(views, plan, "chunk_base") == 0).all())  # one plan chunk
    _check_against_oracle(plan, views, ids, hidden, hp, act)


@pytest.mark.parametrize(("id_dtype", "w_dtype"), [(torch.int32, torch.float32), (torch.int64, torch.bfloat16),
                                                   (torch.int64, torch.float16)])
@pytest.mark.parametrize("num_t", [1, 16, 64])
@pytest.mark.parametrize("routing", ["random", "skewed", "one_expert"])
def test_from_ids_fused_equals_two_kernels_and_the_oracle(id_dtype: torch.dtype, w_dtype: torch.dtype, num_t: int,
                                                          routing: str) -> None:
    num_e, h, hp = 128, 2877, 2944  # H not a multiple of 8: the scalar gather
    plan, views = _setup(num_t, num_e, "mxfp4", hp, tile=1)
    module = glue_module(torch.device("cuda"), "mxfp4")
    g = torch.Generator().manual_seed(num_t)
    if routing == "random":
        ids = torch.randint(0, num_e, (num_t, K), generator=g)
    elif routing == "skewed":  # most pairs on two experts, the rest spread
        ids = torch.where(torch.rand(num_t, K, generator=g) < 0.8, torch.tensor([3, 100, 4, 101]).expand(num_t, K),
                          torch.randint(0, num_e, (num_t, K), generator=g))
    else:  # every token on the same four experts, in reverse order
        ids = torch.tensor([127, 64, 1, 0]).expand(num_t, K).clone()
    ids = ids.to(id_dtype).cuda()
    weights = torch.rand(num_t, K, generator=g).to(w_dtype).cuda()
    hidden = _hidden(num_t, h, torch.float32)
    _both_ways(module, plan, views, (ids, weights), hidden, hp)
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, K), ids.to(torch.int32))
    assert torch.equal(workspace_part(views, plan, "weights").view(num_t, K), weights.float())
    _check_against_oracle(plan, views, ids.to(torch.int32), hidden, hp, "mxfp4")


def test_from_ids_expert_parallel_remaps_flags_and_skips_foreign_experts() -> None:
    num_t, num_e, hp = 40, 32, 512
    plan, views = _setup(num_t, num_e, "mxfp8", hp)
    module = glue_module(torch.device("cuda"), "mxfp8")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 2 * num_e, (num_t, K), generator=g, dtype=torch.int32).cuda()  # ep_size 2, this is rank 1
    ids[5, 1] = 99  # outside every rank's range
    weights = torch.rand(num_t, K, generator=g).cuda()
    hidden = _hidden(num_t, hp, torch.bfloat16)
    kw = {"id_base": num_e, "id_limit": 2 * num_e, "skip_foreign": True}
    _both_ways(module, plan, views, (ids, weights), hidden, hp, **kw)
    local = ids.long() - num_e
    mine = (local >= 0) & (local < num_e)
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, K).long(), torch.where(mine, local, -1))
    assert torch.equal(workspace_part(views, plan, "weights").view(num_t, K), torch.where(mine, weights, 0.0))
    assert int(workspace_part(views, plan, "state")[1]) == 1
    dest = workspace_part(views, plan, "dest").view(num_t, K)
    assert bool((dest[~mine] == -1).all()) and bool((workspace_part(views, plan, "rank").view(num_t, K)[~mine]
                                                     == -1).all())
    # The local pairs' rows, counts and tiles are those of a plan over the local pairs alone.
    experts = local[mine]
    counts = torch.bincount(experts, minlength=num_e)
    assert torch.equal(workspace_part(views, plan, "counts").long(), counts)
    tm = plan.tactic.tile_m
    padded = (counts + tm - 1) // tm * tm
    start = torch.cumsum(padded, 0) - padded
    before = torch.stack([(experts[:i] == experts[i]).sum() for i in range(experts.numel())])
    rows = start[experts] + before
    assert torch.equal(dest[mine].long(), rows)
    tile_rows = torch.arange(plan.tiles, device="cuda") * tm
    want_tiles = torch.searchsorted(torch.cumsum(padded, 0), tile_rows, right=True).clamp(max=num_e - 1)
    assert torch.equal(views.expert_of_tile.long(), want_tiles)
    # Routed rows hold their token's quantized row, every other row keeps its stale bytes; scales match the
    # quantizer over the local rows (padding scales zeroed).
    x = torch.zeros(plan.bound, hp, dtype=torch.float32, device="cuda")
    tokens = torch.arange(num_t, device="cuda").unsqueeze(1).expand(num_t, K)[mine]
    x[rows] = hidden.index_select(0, tokens).float()
    want_q, want_sf = mxfp8_quantize(x, True, 32)
    assert torch.equal(views.x[rows], want_q.view(torch.uint8).reshape(views.x.shape)[rows])
    padding = torch.ones(plan.bound, dtype=torch.bool, device="cuda")
    padding[rows] = False
    assert bool((views.x[padding] == STALE).all())
    assert torch.equal(views.x_sf, want_sf.view(torch.uint8).reshape(-1))


def test_all_tied_logits_pick_the_lowest_ids() -> None:
    num_t, num_e, hp = 9, 32, 256
    plan, views = _setup(num_t, num_e, "mxfp4", hp)
    module = glue_module(torch.device("cuda"), "mxfp4")
    logits = torch.zeros(num_t, num_e, device="cuda")
    hidden = _hidden(num_t, hp, torch.bfloat16)
    _both_ways(module, plan, views, logits, hidden, hp)
    want = torch.arange(K, dtype=torch.int32, device="cuda").expand(num_t, K)
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, K), want)
    assert bool((workspace_part(views, plan, "weights") == 0.25).all())
    _check_against_oracle(plan, views, want.contiguous(), hidden, hp, "mxfp4")


SPECIAL_LOGITS = (float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, 1.0,
                  -1.0, 0.5)


@pytest.mark.parametrize("num_e", [32, 128, 512])
@pytest.mark.parametrize("num_t", [1, 7, 64, 200])
def test_special_logits_rank_like_a_stable_descending_sort(num_t: int, num_e: int) -> None:
    """NaN first, then +inf ... -inf, +0 and -0 equal, denormals in order, ties to the lower id: the warp argmax's
    order key against torch.sort(descending=True, stable=True); both plan kernels (plan_scatter at T <= 128, plan +
    scatter beyond)."""
    hp = 256
    plan, views = _setup(num_t, num_e, "mxfp4", hp)
    module = glue_module(torch.device("cuda"), "mxfp4")
    g = torch.Generator().manual_seed(num_t * 1000 + num_e)
    pool = torch.tensor(SPECIAL_LOGITS)
    logits = pool[torch.randint(0, len(pool), (num_t, num_e), generator=g)]
    logits[0] = pool[torch.randint(3, 5, (num_e,), generator=g)]  # a token of zeros of both signs only
    logits = logits.cuda()
    hidden = _hidden(num_t, hp, torch.bfloat16)
    ids, weights = route(logits, K)
    if num_t <= 128:
        _both_ways(module, plan, views, logits, hidden, hp)
    else:
        _run(module, plan, views, logits, hidden, hp, False)
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, K), ids)
    assert torch.equal(ids[0].cpu(), torch.arange(K, dtype=torch.int32))
    torch.testing.assert_close(workspace_part(views, plan, "weights").view(num_t, K), weights, rtol=2.5e-7, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("swizzled", [True, False])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("num_t", [1, 33])
def test_prequantized_copy_fused_equals_two_kernels_and_the_oracle(swizzled: bool, from_logits: bool,
                                                                   num_t: int) -> None:
    num_e, hp = 16, 512
    plan, views = _setup(num_t, num_e, "mxfp8", hp, tile=1)
    module = glue_module(torch.device("cuda"), "mxfp8")
    logits = _logits(num_t, num_e, torch.float32, seed=7)
    ids, weights = route(logits, K)
    xq, xsf = mxfp8_quantize(torch.randn(num_t, hp).cuda(), swizzled, 32)
    kw = {"input_sf": xsf.view(torch.uint8).reshape(-1), "swizzled_input_sf": swizzled}
    _both_ways(module, plan, views, logits if from_logits else (ids, weights), xq.view(torch.uint8), hp, **kw)
    r = plan_expert_rows(ids, num_e, "mxfp4", plan.tactic, xq.device, validate_ids=False)
    rows_sf = unswizzle_sf(xsf.view(torch.uint8), num_t, hp // 32, SfLayout.layout_128x4) if swizzled else xsf
    tok = r.token_of_row.long()
    want = torch.full((plan.bound, hp), STALE, dtype=torch.uint8, device="cuda")
    want[r.dest] = xq.view(torch.uint8).index_select(0, tok)
    want_sf = torch.zeros(plan.bound, hp // 32, dtype=torch.uint8, device="cuda")
    want_sf[r.dest] = rows_sf.view(torch.uint8).reshape(num_t, hp // 32).index_select(0, tok)
    assert torch.equal(views.x, want)
    assert torch.equal(views.x_sf, swizzle_sf(want_sf, SfLayout.layout_128x4))


def test_padding_scale_columns_and_rows_are_zero_with_an_odd_scale_width() -> None:
    num_t, num_e, hp = 3, 32, 416  # 13 scale columns: 3 padding columns per row in the 128x4 layout
    plan, views = _setup(num_t, num_e, "mxfp4", hp)
    module = glue_module(torch.device("cuda"), "mxfp4")
    logits, hidden = _logits(num_t, num_e, torch.float32, seed=5), _hidden(num_t, hp, torch.float32)
    _both_ways(module, plan, views, logits, hidden, hp)
    _check_against_oracle(plan, views, route(logits, K)[0], hidden, hp, "mxfp4")


def test_cuda_graph_replays_plan_scatter() -> None:
    num_t, num_e, hp = 8, 32, 2944
    plan, views = _setup(num_t, num_e, "mxfp4", hp)
    assert plan.fused_plan_scatter
    module = glue_module(torch.device("cuda"), "mxfp4")
    logits, hidden = _logits(num_t, num_e, torch.float32, seed=2), _hidden(num_t, 2880, torch.bfloat16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream, as torch.cuda.graph wants
        plan_and_scatter(module, plan, views, logits, hidden, hp)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan_and_scatter(module, plan, views, logits, hidden, hp)
    for seed in (3, 4):
        logits.copy_(_logits(num_t, num_e, torch.float32, seed=seed))
        hidden.copy_(_hidden(num_t, 2880, torch.bfloat16, seed=seed))
        views.x.fill_(STALE)  # rows routed by an earlier run keep its data: restart from the stale pattern
        views.x_sf.fill_(STALE)
        graph.replay()
        torch.cuda.synchronize()
        replayed = views.workspace.clone(), views.x.clone(), views.x_sf.clone()
        plan_and_scatter(module, plan, views, logits, hidden, hp)
        torch.cuda.synchronize()
        assert torch.equal(replayed[0], views.workspace)
        assert torch.equal(replayed[1], views.x) and torch.equal(replayed[2], views.x_sf)
        _check_against_oracle(plan, views, route(logits, K)[0], hidden, hp, "mxfp4")


def test_plan_scatter_rejects_what_it_does_not_serve() -> None:
    module4, module8 = glue_module(torch.device("cuda"), "mxfp4"), glue_module(torch.device("cuda"), "mxfp8")
    plan, views = _setup(129, 32, "mxfp4", 256)  # past one plan chunk
    with pytest.raises(ValueError, match="plan_scatter serves"):
        plan_and_scatter(module4, plan, views, _logits(129, 32, torch.float32, 0), _hidden(129, 256, torch.float32),
                         256, fused=True)
    plan, views = _setup(2, 32, "mxfp4", 256)
    xq, xsf = mxfp8_quantize(torch.randn(2, 256).cuda(), True, 32)
    with pytest.raises(ValueError, match="MXFP8 only"):
        plan_and_scatter(module4, plan, views, _logits(2, 32, torch.float32, 0), xq.view(torch.uint8), 256,
                         input_sf=xsf.view(torch.uint8).reshape(-1), fused=True)
    plan, views = _setup(2, 32, "mxfp8", 256)
    with pytest.raises(ValueError, match="logits must be"):
        plan_and_scatter(module8, plan, views, _logits(2, 32, torch.float32, 0).int(), _hidden(2, 256, torch.float32),
                         256, fused=True)
