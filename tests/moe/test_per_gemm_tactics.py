# SPDX-License-Identifier: Apache-2.0
"""Per-GEMM tactics in the MoE pipeline (moe/pipeline.py) on the CPU: the row plan carries GEMM1's and GEMM2's
tactics (one tile height), an explicit tactic pins both, and each GEMM's launcher gets its own."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from flashinfer_sm12x import registry
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES, W4A8_CANDIDATES, gemm_format
from flashinfer_sm12x.moe import pipeline

M64, PP128, CO128 = CANDIDATES
W8PP64, W8CO128, W8PP32 = W4A8_CANDIDATES
SM120 = parse_target("sm_120a")
HP = IP = 2944


def test_row_plan_carries_both_gemms_tactics_sharing_tile_m() -> None:
    # W4A8 at T = 1 on an RTX 5090: GEMM2 (N = Hp) takes the narrower tile, GEMM1 keeps the fused-activation tile.
    plan = pipeline.row_plan(1, 4, 32, "mxfp8_mxfp4", None, SM120, 170, HP, IP)
    assert (plan.gemm1, plan.gemm2) == (W8PP64, W8PP32)
    assert plan.gemm1.tile_m == plan.gemm2.tile_m == plan.tile_m == 128
    assert plan.tactic == plan.gemm1  # the single-tactic view: GEMM1's, whose tile height the plan pads to
    # The same forward on an RTX PRO 6000 (188 SMs): 128x64 fills one wave; a separate cache entry.
    pro = pipeline.row_plan(1, 4, 32, "mxfp8_mxfp4", None, SM120, 188, HP, IP)
    assert (pro.gemm1, pro.gemm2) == (W8PP64, W8PP64)
    # Without the sizes (callers that size buffers only) both GEMMs get the m rules' tactic.
    bare = pipeline.row_plan(1, 4, 32, "mxfp8_mxfp4", None, SM120, 170)
    assert bare.gemm1 == bare.gemm2 == W8PP64


@pytest.mark.parametrize("tactic", [M64, PP128, CO128])
def test_an_explicit_tactic_pins_both_gemms(tactic: Any) -> None:
    plan = pipeline.row_plan(1, 4, 32, "mxfp4", tactic, SM120, 170, HP, IP)
    assert plan.gemm1 == plan.gemm2 == tactic


def test_an_explicit_pair_pins_each_gemm_and_must_share_tile_m() -> None:
    plan = pipeline.row_plan(1, 4, 32, "mxfp8_mxfp4", (W8CO128, W8PP32), SM120, 48, HP, IP)
    assert (plan.gemm1, plan.gemm2) == (W8CO128, W8PP32)
    with pytest.raises(ValueError, match="share tile_m"):
        pipeline.row_plan(1, 4, 32, "mxfp4", (M64, PP128), SM120, 170, HP, IP)
    with pytest.raises(ValueError, match="must be one of"):
        pipeline.row_plan(1, 4, 32, "mxfp4", (M64, W8PP32), SM120, 170, HP, IP)
    with pytest.raises(ValueError, match="pair"):
        pipeline.row_plan(1, 4, 32, "mxfp4", (M64, M64, M64), SM120, 170, HP, IP)


def test_workspace_sizes_follow_the_shared_tile_height() -> None:
    """The buffers and the plan workspace are sized by the tile height both GEMMs share: a pair with GEMM1's tile
    height sizes them as that tactic alone does, whatever GEMM2's tile_n."""
    pair = pipeline.row_plan(3, 4, 32, "mxfp8_mxfp4", (W8PP64, W8PP32), SM120, 170, HP, IP)
    single = pipeline.row_plan(3, 4, 32, "mxfp8_mxfp4", W8PP64, SM120, 170, HP, IP)
    assert (pair.bound, pair.tiles, pair.sf_rows, pair.workspace_elements) == (
        single.bound, single.tiles, single.sf_rows, single.workspace_elements)
    assert pair.bound == 12 * 128  # 12 pairs, at most 12 experts, one 128-row tile each
    w4a4 = pipeline.row_plan(3, 4, 32, "mxfp4", None, SM120, 170, HP, IP)
    assert w4a4.tile_m == 64 and w4a4.bound == 12 * 64
    hp = ip = 256
    ws = pipeline.Workspace(torch.device("cpu"))
    views = ws.views_for(pair, hp, ip, "mxfp8", True)
    assert views.x.shape == (pair.bound, hp) and views.a.shape == (pair.bound, ip) and views.y.shape == (pair.bound, hp)
    assert views.expert_of_tile.numel() == pair.tiles
    assert ws.views_for(pair, hp, ip, "mxfp8", True) is views
    assert ws.views_for(single, hp, ip, "mxfp8", True) is not views  # another plan (GEMM2's tactic differs)


@pytest.mark.parametrize("fused", [True, False])
def test_each_gemm_launcher_gets_its_own_tactic(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    """GEMM1 (swiglu_quantize fused, or store into the bf16 intermediate) runs plan.gemm1, GEMM2 (store_routed, or
    store) runs plan.gemm2; the launcher cache keys each under its own tactic. CPU buffers, recording launchers."""
    calls: list[tuple[str, Any, Any]] = []

    def recorder(name: str) -> Any:
        def launcher(a: torch.Tensor, a_sf: torch.Tensor, w: torch.Tensor, w_sf: torch.Tensor, tiles: torch.Tensor,
                     tactic: Any, out: torch.Tensor, *args: Any, routed: Any = None, **kw: Any) -> Any:
            epilogue = "swiglu_quantize" if name == "swiglu" else ("store_routed" if routed is not None else "store")
            calls.append((epilogue, tactic, w))
            return lambda *a, **k: None
        return launcher

    monkeypatch.setattr(pipeline, "grouped_mm_fp4_launcher", recorder("store"))
    monkeypatch.setattr(pipeline, "grouped_mm_fp4_swiglu_quantize_launcher", recorder("swiglu"))

    class Glue:
        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: calls.append((name, None, None))

    act, hp, ip, num_e, k = "mxfp8", 128, 128, 4, 2
    plan = pipeline.row_plan(3, k, num_e, gemm_format(act), (W8PP64, W8PP32), SM120)
    ws = pipeline.Workspace(torch.device("cpu"))
    views = ws.views_for(plan, hp, ip, act, fused)
    w13, w2 = torch.zeros(num_e, 2 * ip, hp, dtype=torch.uint8), torch.zeros(num_e, hp, ip, dtype=torch.uint8)
    experts = pipeline.Experts(act, w13, torch.zeros(1, dtype=torch.uint8), None, w2, torch.zeros(1, dtype=torch.uint8),
                               None, "interleaved", True, 1.702, 1.0, 7.0)
    pipeline._gemms_and_finalize(ws, plan, views, Glue(), experts, torch.zeros(3, hp), SM120)
    gemms = [c for c in calls if c[1] is not None]
    if fused:
        assert [(e, t) for e, t, _ in gemms] == [("swiglu_quantize", W8PP64), ("store_routed", W8PP32)]
    else:
        assert [(e, t) for e, t, _ in gemms] == [("store", W8PP64), ("store", W8PP32)]
        assert [c[0] for c in calls].index("activation") == 1  # between the two GEMMs
    assert gemms[0][2] is w13 and gemms[1][2] is w2
    assert calls[-1][0] == "finalize"
    keys = list(ws.launchers)
    assert [key[0] for key in keys] == (["swiglu_quantize", "store_routed"] if fused else ["store", "store"])
    assert [key[-1] for key in keys] == [W8PP64, W8PP32]
    # A repeated forward reuses both launchers (no new calls to the launcher factories).
    before = len(gemms)
    pipeline._gemms_and_finalize(ws, plan, views, Glue(), experts, torch.zeros(3, hp), SM120)
    assert len([c for c in calls if c[1] is not None]) == before


def test_reference_rows_carry_each_gemms_tactic() -> None:
    ids = torch.tensor([[0, 5, 9, 30]], dtype=torch.int32)
    rows = pipeline.plan_expert_rows(ids, 32, "mxfp8_mxfp4", None, None, False, sm_count=170, hidden_padded=HP,
                                     inter_padded=IP)
    assert (rows.gemm1, rows.gemm2) == (W8PP64, W8PP32) and rows.tactic == W8PP64
    assert rows.bound == 4 * 128 and rows.expert_of_tile.tolist() == [0, 5, 9, 30]
    pinned = pipeline.plan_expert_rows(ids, 32, "mxfp4", M64, None, False)
    assert pinned.gemm1 == pinned.gemm2 == M64


def test_deployment_prebuild_covers_each_gemms_tactic() -> None:
    """GPT-OSS-20B W4A8 on sm_120a: GEMM2's 128x32 (at T = 1 on a 170-SM part) is prebuilt with the epilogues it
    serves (no fused activation: tile_n 32); GEMM1's 128x64 with all three."""
    deployment = registry.Deployment(registry.MODELS["gpt-oss-20b"], "mxfp8", 64)
    groups = [spec.group for spec in registry.DEPLOYMENT["grouped_mm_fp4"](SM120, deployment)]
    assert f"mxfp8_mxfp4_bfloat16_{W8PP32.name}_store_routed" in groups
    assert f"mxfp8_mxfp4_bfloat16_{W8PP32.name}_swiglu_quantize" not in groups
    assert f"mxfp8_mxfp4_bfloat16_{W8PP64.name}_swiglu_quantize" in groups
