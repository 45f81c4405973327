# SPDX-License-Identifier: Apache-2.0
"""Host side of the glue pipeline, without a GPU: the row plan, the workspace layout, the module menu, and the typed
errors fused_moe(impl="kernels") raises before any launch."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.errors import ConfigError
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels import FAMILIES
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES
from flashinfer_sm12x.kernels.moe_glue import FUSED_MAX_PAIRS, FUSED_MAX_TOKENS, MENU, moe_glue_spec
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.pipeline import row_plan
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.ops.moe_glue import fused_plan_scatter_serves, kernels_support, workspace_offsets
from flashinfer_sm12x.testing.moe_cases import make_weights


@pytest.mark.parametrize(("num_t", "num_e", "k"), [(1, 32, 4), (3, 128, 4), (64, 32, 4), (1000, 128, 4), (8192, 32, 4),
                                                   (5, 4, 4)])
@pytest.mark.parametrize("tactic", CANDIDATES)
def test_row_plan_bound_covers_every_routing(num_t: int, num_e: int, k: int, tactic) -> None:
    plan = row_plan(num_t, k, num_e, "mxfp4", tactic, None)
    rows, tm = num_t * k, tactic.tile_m
    assert plan.bound % tm == 0 and plan.tiles * tm == plan.bound and plan.sf_rows % 128 == 0
    # The worst case: every used expert leaves tm - 1 rows of padding.
    worst = sum(-(-c // tm) * tm for c in [rows // min(num_e, rows)] * min(num_e, rows))
    assert plan.bound >= worst and plan.bound >= rows
    assert plan.bound < rows + min(num_e, rows) * tm + tm


def test_row_plan_is_cached_and_heuristic_picks_a_candidate() -> None:
    a = row_plan(7, 4, 32, "mxfp4", None, None)
    assert row_plan(7, 4, 32, "mxfp4", None, None) is a
    assert a.tactic in CANDIDATES


def test_row_plan_rejects_a_foreign_tactic() -> None:
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import W4A8_CANDIDATES
    with pytest.raises(ValueError, match="tactic"):
        row_plan(7, 4, 32, "mxfp4", W4A8_CANDIDATES[0], None)


def test_workspace_layout_is_contiguous_and_matches_the_template() -> None:
    offsets = workspace_offsets(300, 4, 32, 40)
    at = 0
    for name in ("state", "ids", "weights", "rank", "dest", "chunk_base", "counts", "padded_start", "expert_of_tile"):
        assert offsets[name][0] == at
        at += offsets[name][1]
    assert offsets["chunk_base"][1] == 3 * 32  # ceil(300 / 128) chunks
    assert row_plan(300, 4, 32, "mxfp4", CANDIDATES[0], None).workspace_elements == sum(
        n for _, n in workspace_offsets(300, 4, 32, row_plan(300, 4, 32, "mxfp4", CANDIDATES[0], None).tiles).values())


@pytest.mark.parametrize(("num_t", "k", "num_e", "fused"), [
    (1, 4, 32, True), (32, 4, 32, True), (33, 4, 32, False), (64, 4, 32, False), (32, 4, 128, True),
    (32, 4, 512, False), (8, 16, 128, True), (9, 16, 128, False), (0, 4, 32, False), (8192, 4, 32, False)])
def test_plan_scatter_serves_decode_sizes_within_the_kernel_limits(num_t: int, k: int, num_e: int,
                                                                   fused: bool) -> None:
    assert fused_plan_scatter_serves(num_t, k, num_e) == fused
    if num_t:
        assert row_plan(num_t, k, num_e, "mxfp4", CANDIDATES[0], None).fused_plan_scatter == fused
    if fused:  # what the kernel itself accepts (include/flashinfer_sm12x/moe/plan_scatter.cuh)
        assert num_t <= FUSED_MAX_TOKENS and num_t * k <= FUSED_MAX_PAIRS


@pytest.mark.parametrize(("num_t", "k", "sm_count", "fused"), [
    (12, 4, 48, True), (13, 4, 48, False),      # DGX Spark (48 SMs): one wave is 48 CTAs
    (32, 4, 132, True), (22, 6, 132, True),     # H200 (132 SMs)
    (32, 4, 170, True), (33, 4, 170, False),    # RTX 5090 (170 SMs): the T <= 32 line still holds
    (48, 1, 48, False), (1, 16, 8, False)])
def test_plan_scatter_serves_one_wave_of_the_device(num_t: int, k: int, sm_count: int, fused: bool) -> None:
    """plan_scatter runs T*k CTAs at one per SM: past one wave of the GPU's SMs the two-kernel path is taken."""
    assert fused_plan_scatter_serves(num_t, k, 32, sm_count) == fused
    assert row_plan(num_t, k, 32, "mxfp4", CANDIDATES[0], None, sm_count).fused_plan_scatter == fused
    assert row_plan(num_t, k, 32, "mxfp4", CANDIDATES[0], None, sm_count) is not row_plan(
        num_t, k, 32, "mxfp4", CANDIDATES[0], None, sm_count + 1)


def test_glue_module_exports_plan_scatter() -> None:
    for fmt in MENU["act_format"]:
        text = moe_glue_spec(parse_target("sm_120a"), fmt).sources[0].text
        assert "TVM_FFI_DLL_EXPORT_TYPED_FUNC(plan_scatter, plan_scatter)" in text
        assert ("plan_scatter_kernel<kFormat, true, uint8_t>" in text) == (fmt == "mxfp8")


def test_kernels_support_limits() -> None:
    assert kernels_support(128, 4) and kernels_support(512, 16)
    assert not kernels_support(513, 4) and not kernels_support(32, 17) and not kernels_support(2, 4)


def test_glue_family_renders_only_menu_values() -> None:
    target = parse_target("sm_120a")
    for fmt in MENU["act_format"]:
        text = moe_glue_spec(target, fmt).sources[0].text
        assert text.startswith("// SPDX-License-Identifier: Apache-2.0")
        assert ("scatter_prequantized" in text) == (fmt == "mxfp8")
    with pytest.raises(ConfigError):
        moe_glue_spec(target, "nvfp4")
    assert [s.group for s in FAMILIES["moe_glue"].prebuild(target)] == ["mxfp4", "mxfp8"]


@pytest.fixture(scope="module")
def small_weights():
    return prepare_gpt_oss_weights(**make_weights(4, 64, 64), pad_to=32)


def test_impl_must_be_known(small_weights) -> None:
    hidden, logits = torch.zeros(2, 64), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="impl"):
        fused_moe(hidden, logits, small_weights, top_k=2, impl="triton")


def test_kernels_impl_needs_cuda(small_weights) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        fused_moe(torch.zeros(2, 64), torch.zeros(2, 4), small_weights, top_k=2, impl="kernels")


def test_kernels_impl_rejects_unsupported_routing() -> None:
    many = prepare_gpt_oss_weights(**make_weights(600, 32, 32), pad_to=32)
    ids = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="E <= 512"):
        fused_moe(torch.zeros(2, 32), (ids, torch.zeros(2, 4)), many, impl="kernels")


def test_kernels_impl_typed_errors(small_weights) -> None:
    hidden = torch.zeros(2, 64)
    ids = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(TypeError, match="out_dtype"):
        fused_moe(hidden, (ids, torch.zeros(2, 2)), small_weights, impl="kernels", out_dtype=torch.int32)


def test_gemm_launcher_checks_like_grouped_mm_fp4() -> None:
    from flashinfer_sm12x.ops.grouped_mm_fp4 import grouped_mm_fp4_launcher
    a, sf = torch.zeros(64, 64, dtype=torch.uint8), torch.zeros(128 * 4, dtype=torch.uint8)
    b, b_sf = torch.zeros(2, 64, 64, dtype=torch.uint8), torch.zeros(2 * 128 * 4, dtype=torch.uint8)
    tiles = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(TypeError, match="out"):
        grouped_mm_fp4_launcher(a, sf, b, b_sf, tiles, CANDIDATES[0], None)
    with pytest.raises(TypeError, match="a must be"):
        grouped_mm_fp4_launcher(a.float(), sf, b, b_sf, tiles, CANDIDATES[0], torch.zeros(64, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="CUDA"):
        grouped_mm_fp4_launcher(a, sf, b, b_sf, tiles, CANDIDATES[0], torch.zeros(64, 64, dtype=torch.bfloat16),
                                fmt="mxfp4")
