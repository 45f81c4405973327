# SPDX-License-Identifier: Apache-2.0
"""Each glue kernel against the torch path on a CUDA GPU (the glue has no block-scaled MMA: on an H200 these are
native SM90 runs, with FLASHINFER_SM12X_EMULATE=1 so the device maps to the sm_90a build).

Bit-exact where the arithmetic is the same: routing ids, dest / counts / padded starts / expert_of_tile, the gathered
quantized rows and every scale byte (padding rows' and padding columns' scales zero), the pre-quantized copy,
finalize. Padding rows' data is not rewritten (their GEMM outputs are never read): the tests fill the buffers with
stale bytes first and check those rows still hold them. Routing weights: within 2 ulp (torch's softmax may sum and
divide in another order). Activation: exp/sigmoid may round differently from torch's, which can flip a quantized code
at a rounding boundary: at most 0.1% of codes differ, and by one step."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.formats import SfLayout, swizzle_sf, unswizzle_sf
from flashinfer_sm12x.formats.quantize import mxfp4_quantize, mxfp8_quantize
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, W4A8_CANDIDATES, gemm_format
from flashinfer_sm12x.moe.pipeline import (
    GlueViews,
    RowPlan,
    glue_views,
    plan_and_scatter,
    plan_expert_rows,
    row_plan,
    swiglu,
    workspace_part,
)
from flashinfer_sm12x.moe.routing import route
from flashinfer_sm12x.ops.moe_glue import LAYOUT_CODE, glue_module

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("emulate")]



def _setup(num_t: int, num_e: int, k: int, act: str, hp: int, ip: int, tactic=None) -> tuple[RowPlan, GlueViews]:
    dev = torch.device("cuda")
    tactic = tactic or (CANDIDATES[0] if act == "mxfp4" else W4A8_CANDIDATES[0])
    plan = row_plan(num_t, k, num_e, gemm_format(act), tactic, None)
    return plan, glue_views(dev, plan, hp, ip, act)


def _logits(num_t: int, num_e: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties, which must go to the lower expert id.
    return (torch.randint(-8, 8, (num_t, num_e), generator=g).float() / 4).to(dtype).cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("num_e", "num_t"), [(32, 1), (32, 3), (128, 200), (128, 1000), (32, 4096)])
def test_plan_from_logits_matches_route_and_permute(num_e: int, num_t: int, dtype: torch.dtype) -> None:
    k = 4
    plan, views = _setup(num_t, num_e, k, "mxfp4", 128, 128)
    logits = _logits(num_t, num_e, dtype)
    glue_module(logits.device, "mxfp4").plan_logits(logits, views.workspace, k, plan.tactic.tile_m, plan.tiles)
    ids, weights = route(logits, k)
    got_ids = workspace_part(views, plan, "ids").view(num_t, k)
    assert torch.equal(got_ids, ids)
    torch.testing.assert_close(workspace_part(views, plan, "weights").view(num_t, k), weights, rtol=2.5e-7, atol=0)
    _check_rows(plan, views, ids, glue_module(logits.device, "mxfp4"))


def _check_rows(plan: RowPlan, views: GlueViews, ids: torch.Tensor, module: object, fmt: str = "mxfp4") -> None:
    r = plan_expert_rows(ids, plan.num_experts, fmt, plan.tactic, ids.device, validate_ids=False)
    want_dest = r.dest[r.inverse.long()]  # padded row of expanded pair j = t*k + slot
    # The plan kernel ranks the pairs; the scatter kernel turns ranks into padded rows (dest) as it gathers.
    hp = views.x.shape[1] * (2 if fmt == "mxfp4" else 1)
    module.scatter(torch.zeros(plan.num_tokens, hp, device="cuda"), views.workspace, views.x, views.x_sf,
                   plan.top_k, plan.num_experts, hp, plan.tactic.tile_m, plan.bound)
    assert torch.equal(workspace_part(views, plan, "dest").long(), want_dest.long())
    counts = torch.bincount(ids.reshape(-1).long(), minlength=plan.num_experts)
    assert torch.equal(workspace_part(views, plan, "counts").long(), counts)
    assert torch.equal(views.expert_of_tile, r.expert_of_tile)


def test_plan_from_ids_flags_and_skips_foreign_experts() -> None:
    num_t, num_e, k = 70, 8, 4
    plan, views = _setup(num_t, num_e, k, "mxfp8", 128, 128)
    module = glue_module(torch.device("cuda"), "mxfp8")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 2 * num_e, (num_t, k), generator=g, dtype=torch.int32).cuda()  # ep_size 2
    ids[5, 1] = 99  # outside every rank's range
    w = torch.rand(num_t, k, generator=g).cuda()
    state = workspace_part(views, plan, "state")
    state[1] = 0
    module.plan_ids(ids, w, views.workspace, num_e, plan.tactic.tile_m, plan.tiles, num_e, 2 * num_e, True)  # rank 1
    local = ids.long() - num_e
    mine = (local >= 0) & (local < num_e)
    # Another rank's pair: local id -1, weight 0, no rank (and, below, no row).
    assert torch.equal(workspace_part(views, plan, "ids").view(num_t, k).long(), torch.where(mine, local, -1))
    assert torch.equal(workspace_part(views, plan, "weights").view(num_t, k), torch.where(mine, w, 0.0))
    assert bool((workspace_part(views, plan, "rank").view(num_t, k)[~mine] == -1).all())
    assert int(state[1]) == 1
    module.scatter(torch.zeros(num_t, 128, device="cuda"), views.workspace, views.x, views.x_sf, k, num_e, 128,
                   plan.tactic.tile_m, plan.bound)
    dest = workspace_part(views, plan, "dest").view(num_t, k)
    assert bool((dest[~mine] == -1).all())
    experts = local[mine]  # the local pairs in ascending j
    counts = torch.bincount(experts, minlength=num_e)
    assert torch.equal(workspace_part(views, plan, "counts").long(), counts)
    tm = plan.tactic.tile_m
    start = torch.cumsum((counts + tm - 1) // tm * tm, 0) - (counts + tm - 1) // tm * tm
    before = torch.stack([(experts[:i] == experts[i]).sum() for i in range(experts.numel())])
    assert torch.equal(dest[mine].long(), start[experts] + before)


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("num_e", "num_t", "h"), [(32, 1, 2880), (32, 3, 2880), (8, 300, 320), (128, 64, 2880)])
def test_scatter_matches_torch_gather_and_quantize(act: str, dtype: torch.dtype, num_e: int, num_t: int, h: int
                                                   ) -> None:
    k, hp = 4, -(-h // 128) * 128
    plan, views = _setup(num_t, num_e, k, act, hp, 128)
    module = glue_module(torch.device("cuda"), act)
    logits = _logits(num_t, num_e, torch.float32, seed=num_t)
    hidden = (torch.randn(num_t, h, generator=torch.Generator().manual_seed(1)) * 3).to(dtype).cuda()
    hidden[0, :7] = 0.0  # a partly zero block
    views.x.fill_(0xAB)  # stale bytes must not survive
    views.x_sf.fill_(0xAB)
    module.plan_logits(logits, views.workspace, k, plan.tactic.tile_m, plan.tiles)
    module.scatter(hidden, views.workspace, views.x, views.x_sf, k, num_e, hp, plan.tactic.tile_m, plan.bound)
    ids, _ = route(logits, k)
    r = plan_expert_rows(ids, num_e, gemm_format(act), plan.tactic, hidden.device, validate_ids=False)
    x = torch.zeros(plan.bound, hp, dtype=torch.float32, device="cuda")
    x[r.dest, :h] = hidden.index_select(0, r.token_of_row.long()).float()
    want_q, want_sf = mxfp4_quantize(x) if act == "mxfp4" else mxfp8_quantize(x, True, 32)
    routed = r.dest.long()
    assert torch.equal(views.x[routed], want_q.view(torch.uint8).reshape(views.x.shape)[routed])
    assert bool((views.x[_padding_rows(plan.bound, routed)] == 0xAB).all())  # padding data left as it was
    assert torch.equal(views.x_sf, want_sf.view(torch.uint8).reshape(-1))  # padding scales zeroed


def _padding_rows(rows: int, routed: torch.Tensor) -> torch.Tensor:
    pad = torch.ones(rows, dtype=torch.bool, device=routed.device)
    pad[routed] = False
    return pad


@pytest.mark.parametrize("swizzled", [True, False])
def test_scatter_prequantized_copies_rows_and_scales(swizzled: bool) -> None:
    num_t, num_e, k, hp = 130, 16, 4, 512
    plan, views = _setup(num_t, num_e, k, "mxfp8", hp, 128)
    module = glue_module(torch.device("cuda"), "mxfp8")
    logits = _logits(num_t, num_e, torch.float32, seed=7)
    xq, xsf = mxfp8_quantize(torch.randn(num_t, hp).cuda(), swizzled, 32)
    views.x.fill_(0xAB)
    views.x_sf.fill_(0xAB)
    module.plan_logits(logits, views.workspace, k, plan.tactic.tile_m, plan.tiles)
    module.scatter_prequantized(xq.view(torch.uint8), xsf.view(torch.uint8).reshape(-1), swizzled, views.workspace,
                                views.x, views.x_sf, k, num_e, plan.tactic.tile_m, plan.bound)
    ids, _ = route(logits, k)
    r = plan_expert_rows(ids, num_e, "mxfp8_mxfp4", plan.tactic, xq.device, validate_ids=False)
    rows_sf = unswizzle_sf(xsf.view(torch.uint8), num_t, hp // 32, SfLayout.layout_128x4) if swizzled else xsf
    tok = r.token_of_row.long()
    want = torch.full((plan.bound, hp), 0xAB, dtype=torch.uint8, device="cuda")  # padding data left as it was
    want[r.dest] = xq.view(torch.uint8).index_select(0, tok)
    want_sf = torch.zeros(plan.bound, hp // 32, dtype=torch.uint8, device="cuda")
    want_sf[r.dest] = rows_sf.view(torch.uint8).reshape(num_t, hp // 32).index_select(0, tok)
    assert torch.equal(views.x, want)
    assert torch.equal(views.x_sf, swizzle_sf(want_sf, SfLayout.layout_128x4))


@pytest.mark.parametrize("act", ["mxfp4", "mxfp8"])
@pytest.mark.parametrize(("layout", "activation", "per_expert"), [
    (0, "swiglu_oai", False), (1, "swiglu_oai", True), (2, "swiglu_oai", True), (0, "swiglu", False)])
def test_activation_matches_torch_within_a_rounding_flip(act: str, layout: int, activation: str,
                                                         per_expert: bool) -> None:
    num_t, num_e, k, ip = 50, 8, 4, 416  # 13 scale columns: the 128x4 layout pads each row with 3 zero columns
    plan, views = _setup(num_t, num_e, k, act, 128, ip)
    module = glue_module(torch.device("cuda"), act)
    plan_and_scatter(module, plan, views, _logits(num_t, num_e, torch.float32, 11), torch.zeros(num_t, 128,
                                                                                                 device="cuda"), 128)
    g = torch.Generator().manual_seed(5)
    views.h.copy_((torch.randn(plan.bound, 2 * ip, generator=g) * 4).to(torch.bfloat16))
    views.a.fill_(0xAB)  # stale bytes: padding rows keep their data, their scales must become zero
    views.a_sf.fill_(0xAB)
    bias = (torch.randn(num_e, 2 * ip, generator=g)).to(torch.bfloat16).cuda()
    g1 = (torch.rand(num_e, generator=g) + 0.5).cuda()
    alpha = (torch.rand(num_e, generator=g) + 1).cuda() if per_expert else 1.702
    beta = (torch.rand(num_e, generator=g)).cuda() if per_expert else 1.0
    limit = (torch.rand(num_e, generator=g) * 4 + 3).cuda() if per_expert else 7.0
    module.activation(views.h, views.workspace, views.a, views.a_sf, num_t, k, num_e, plan.tactic.tile_m, layout,
                      activation == "swiglu_oai", g1, bias, alpha if per_expert else None,
                      beta if per_expert else None, limit if per_expert else None,
                      0.0 if per_expert else alpha, 0.0 if per_expert else beta, 0.0 if per_expert else limit, True)
    e_row = views.expert_of_tile.long().repeat_interleave(plan.tactic.tile_m)

    def per_row(v):
        return v.index_select(0, e_row).unsqueeze(1) if isinstance(v, torch.Tensor) else v

    hf = views.h.float() * per_row(g1) + bias.float().index_select(0, e_row)
    layout_name = {code: name for name, code in LAYOUT_CODE.items()}[layout]
    a = swiglu(hf, layout_name, ip, activation == "swiglu_oai", per_row(alpha), per_row(beta), per_row(limit))
    want_q, want_sf = mxfp4_quantize(a.contiguous()) if act == "mxfp4" else mxfp8_quantize(a.contiguous(), True, 32)
    routed = workspace_part(views, plan, "dest").long()
    sf_cols = ip // 32
    got_sf = unswizzle_sf(views.a_sf, plan.sf_rows, sf_cols, SfLayout.layout_128x4)
    want_sf = unswizzle_sf(want_sf.view(torch.uint8), plan.sf_rows, sf_cols, SfLayout.layout_128x4)
    assert (got_sf[routed] != want_sf[routed]).float().mean() <= 1e-3
    only_routed = torch.zeros_like(got_sf)
    only_routed[routed] = got_sf[routed]
    assert torch.equal(views.a_sf, swizzle_sf(only_routed, SfLayout.layout_128x4))  # every other scale byte zero
    got_q, want_q = views.a, want_q.view(torch.uint8).reshape(views.a.shape)
    assert (got_q[routed] != want_q[routed]).float().mean() <= 1e-3
    assert bool((views.a[_padding_rows(plan.bound, routed)] == 0xAB).all())  # padding rows not computed


@pytest.mark.parametrize("h", [2880, 2877])  # the 16-byte vector path and the scalar one
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("with_g2", "bias_dtype"), [(False, None), (True, torch.bfloat16), (True, torch.float32)])
@pytest.mark.parametrize(("num_t", "k"), [(333, 4), (1, 4), (5, 6), (3, 1)])  # k past one batch of loaded slots
def test_finalize_is_bit_exact_with_the_slot_ordered_sum(out_dtype: torch.dtype, with_g2: bool,
                                                         bias_dtype: torch.dtype | None, h: int, num_t: int,
                                                         k: int) -> None:
    num_e, hp = 16, 2944
    plan, views = _setup(num_t, num_e, k, "mxfp4", hp, 128)
    module = glue_module(torch.device("cuda"), "mxfp4")
    module.plan_logits(_logits(num_t, num_e, torch.float32, 2), views.workspace, k, plan.tactic.tile_m, plan.tiles)
    module.scatter(torch.zeros(num_t, h, device="cuda"), views.workspace, views.x, views.x_sf, k, num_e, hp,
                   plan.tactic.tile_m, plan.bound)  # writes dest
    g = torch.Generator().manual_seed(9)
    views.y.copy_(torch.randn(plan.bound, hp, generator=g).to(torch.bfloat16))
    g2 = (torch.rand(num_e, generator=g) + 0.5).cuda() if with_g2 else None
    b2 = torch.randn(num_e, hp, generator=g).to(bias_dtype).cuda() if bias_dtype else None
    out = torch.empty(num_t, h, dtype=out_dtype, device="cuda")
    module.finalize(views.y, views.workspace, out, k, num_e, plan.tactic.tile_m, g2, b2)
    ids = workspace_part(views, plan, "ids").long().view(num_t, k)
    w = workspace_part(views, plan, "weights").view(num_t, k)
    dest = workspace_part(views, plan, "dest").long().view(num_t, k)
    acc = torch.zeros(num_t, h, device="cuda")
    for s in range(k):
        v = views.y.float().index_select(0, dest[:, s])[:, :h]
        if g2 is not None:
            v = v * g2[ids[:, s]].unsqueeze(1)
        if b2 is not None:
            v = v + b2.float()[ids[:, s], :h]
        acc = acc + w[:, s:s + 1] * v
    assert torch.equal(out, acc.to(out_dtype))
