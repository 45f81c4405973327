# SPDX-License-Identifier: Apache-2.0
"""grouped_mm_fp4's checks and menus on the CPU: everything a bad call must hit before any module loads."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels import grouped_mm_fp4 as g
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.ops.grouped_mm_fp4 import grouped_mm_fp4


def _w4a8(m: int = 128, n: int = 64, k: int = 256, experts: int = 2, tactic: Tactic | None = None, **kw):
    args = dict(a=torch.zeros(m, k, dtype=torch.float8_e4m3fn),
                a_descale=torch.zeros(128 * (k // 32), dtype=torch.uint8),
                b=torch.zeros(experts, n, k // 2, dtype=torch.uint8),
                b_descale=torch.zeros(experts * 128 * (k // 32), dtype=torch.uint8),
                expert_of_tile=torch.zeros(m // 128, dtype=torch.int32), tactic=tactic or g.W4A8_CANDIDATES[0])
    args.update(kw)
    return grouped_mm_fp4(**args)


def test_format_follows_a_dtype_and_tactic_must_match() -> None:
    with pytest.raises(ValueError, match="tactic for mxfp8_mxfp4"):
        _w4a8(tactic=g.CANDIDATES[0])  # the 64-row tile is packed-e2m1 only
    with pytest.raises(TypeError, match="uint8 .packed MXFP4. or float8_e4m3fn"):
        _w4a8(a=torch.zeros(128, 256, dtype=torch.bfloat16))


def test_w4a8_shape_rules() -> None:
    with pytest.raises(ValueError, match="K % 128"):
        _w4a8(k=160, a_descale=torch.zeros(128 * 8, dtype=torch.uint8),
              b_descale=torch.zeros(2 * 128 * 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="K mismatch"):
        _w4a8(b=torch.zeros(2, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="128x4 layout"):
        _w4a8(b_descale=torch.zeros(128 * 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one CUDA device"):
        _w4a8()  # all valid, but on the CPU


@pytest.mark.parametrize("tactic", g.PROVEN["sm_120a"]["mxfp8_mxfp4"], ids=lambda t: t.name)
def test_w4a8_emulated_build_uses_its_mainloop(tactic: Tactic) -> None:
    spec = g.FAMILY.spec(parse_target("sm_90a"), "mxfp8_mxfp4", tactic, torch.bfloat16)
    text = spec.sources[0].text
    assert "emulation/blockscaled_mma_sm90.cuh" in text and "mainloops/w4a8_emulated.cuh" in text
    assert "grouped_collective.cuh" not in text
    native = g.FAMILY.spec(parse_target("sm_120a"), "mxfp8_mxfp4", tactic, torch.bfloat16).sources[0].text
    assert "w4a8_emulated.cuh" not in native and "grouped_collective.cuh" in native


@pytest.mark.parametrize("fmt", g.FORMATS)
@pytest.mark.parametrize("arch", ["sm_120a", "sm_121a"])
def test_heuristic_picks_only_proven_tiles(fmt: str, arch: str) -> None:
    target = parse_target(arch)
    for rows, experts in [(4, 32), (64, 32), (4000, 32), (32768, 32), (100000, 8)]:
        order = g.heuristic(rows, 2944, 2944, fmt, target, groups=experts)
        assert order and set(order) == set(g.PROVEN[arch][fmt])


def test_expert_rows_tables_are_checked_before_any_launch() -> None:
    """expert_rows / routed (the plan's padded_start and counts): int32 [E] on a's device, apart from the outputs."""
    from flashinfer_sm12x.ops.grouped_mm_fp4 import _expert_row_tables

    b, cpu = torch.zeros(3, 64, 64, dtype=torch.uint8), torch.device("cpu")
    start, counts = torch.zeros(3, dtype=torch.int32), torch.ones(3, dtype=torch.int32)
    out = torch.zeros(128, 64, dtype=torch.bfloat16)
    assert _expert_row_tables(None, b, cpu, out, "f") == (None, None)
    assert _expert_row_tables((start, counts), b, cpu, out, "f") == (start, counts)
    with pytest.raises(TypeError, match="tuple"):
        _expert_row_tables([start, counts], b, cpu, out, "f")
    with pytest.raises(TypeError, match="int32"):
        _expert_row_tables((start.long(), counts), b, cpu, out, "f")
    with pytest.raises(ValueError, match="shape"):
        _expert_row_tables((start, counts[:2]), b, cpu, out, "f")
    with pytest.raises(ValueError, match="meta"):
        _expert_row_tables((start, counts), b, torch.device("meta"), out, "f")
    with pytest.raises(ValueError, match="overlaps counts"):
        _expert_row_tables((start, out.view(torch.int32)[0, :3]), b, cpu, out, "f")
    sf = torch.zeros(16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out_sf overlaps padded_start"):
        _expert_row_tables((sf.view(torch.int32)[:3], counts), b, cpu, (("out", out), ("out_sf", sf)), "f")


def test_expert_rows_need_cuda_tensors_like_every_operand() -> None:
    """Bad tables on CPU operands: the operands' device check fires first (one typed error, before any launch)."""
    with pytest.raises(ValueError, match="CUDA"):
        _w4a8(expert_rows=(torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int32)))
