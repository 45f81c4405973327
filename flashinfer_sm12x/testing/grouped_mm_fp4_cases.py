# SPDX-License-Identifier: Apache-2.0
"""grouped_mm_fp4 cases shared by the SM90 emulation tests and the native SM12x tests: random expert weights, one
grouped GEMM against a float64 per-tile reference, and the bad-input checks on CUDA tensors."""

from __future__ import annotations

import pytest
import torch

from ..formats import mxfp4_dequantize, mxfp4_quantize, mxfp8_dequantize, mxfp8_quantize
from ..kernels.grouped_mm_fp4 import CANDIDATES, gemm_format
from ..ops.grouped_mm_fp4 import grouped_mm_fp4, grouped_mm_fp4_launcher


def expert_weights(num_e: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, n, k/2] codes and [E, round_up(n,128), round_up(k/32,4)] 128x4 scales, one quantization per expert."""
    parts = [mxfp4_quantize(torch.randn(n, k, generator=gen).cuda()) for _ in range(num_e)]
    return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])


def run_grouped_case(tactic, num_e: int, tiles: int, n: int, k: int, act: str = "mxfp4") -> None:
    """One grouped GEMM against the per-tile float64 reference; act "mxfp8" is W4A8 (native SM12x only)."""
    gen = torch.Generator().manual_seed(num_e * 100 + k)
    m = tiles * tactic.tile_m
    x_in = (torch.randn(m, k, generator=gen) * 3).cuda()
    a, a_sf = mxfp4_quantize(x_in) if act == "mxfp4" else mxfp8_quantize(x_in, True, 32)
    b, b_sf = expert_weights(num_e, n, k, gen)
    expert_of_tile = torch.randint(0, num_e, (tiles,), generator=gen, dtype=torch.int32)
    expert_of_tile[0] = num_e - 1  # the last expert's batch offset is exercised every time
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    grouped_mm_fp4(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, out=out, fmt=gemm_format(act))
    torch.cuda.synchronize()
    x = (mxfp4_dequantize(a, a_sf) if act == "mxfp4" else mxfp8_dequantize(a, a_sf)).double()
    ref = torch.empty(m, n, dtype=torch.float64, device="cuda")
    for t, e in enumerate(expert_of_tile.tolist()):
        rows = slice(t * tactic.tile_m, (t + 1) * tactic.tile_m)
        ref[rows] = x[rows] @ mxfp4_dequantize(b[e], b_sf[e]).double().T
    err = float((out.double() - ref).abs().max() / ref.abs().max())
    assert not out.isnan().any() and err < 2**-7, f"max error {err:.2e} of max |ref|"


def check_bad_inputs_rejected_before_launch() -> None:
    """grouped_mm_fp4's typed errors on CUDA tensors, before any launch."""
    tactic = CANDIDATES[0]
    a, a_sf = mxfp4_quantize(torch.randn(64, 128).cuda())
    b, b_sf = expert_weights(2, 128, 128, torch.Generator().manual_seed(0))
    tiles = torch.zeros(1, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="multiple of 64"):
        grouped_mm_fp4(a[:32], a_sf, b, b_sf, tiles, tactic, fmt="mxfp4")
    with pytest.raises(TypeError, match="int32"):
        grouped_mm_fp4(a, a_sf, b, b_sf, tiles.long(), tactic, fmt="mxfp4")
    with pytest.raises(ValueError, match="shape"):
        grouped_mm_fp4(a, a_sf, b, b_sf, torch.zeros(2, dtype=torch.int32, device="cuda"), tactic, fmt="mxfp4")
    with pytest.raises(ValueError, match="elements"):
        grouped_mm_fp4(a, a_sf, b, b_sf[:1], tiles, tactic, fmt="mxfp4")
    with pytest.raises(ValueError, match="CUDA"):
        grouped_mm_fp4(a, a_sf, b, b_sf, tiles.cpu(), tactic, fmt="mxfp4")


def _activation_workspace(expert_of_tile: torch.Tensor, num_e: int, tile_m: int) -> torch.Tensor:
    """A glue plan workspace in which every row of every tile is a routed pair (T = rows, k = 1, expert_of_tile
    sorted), so the standalone activation kernel computes every row, as the fused epilogue does."""
    from ..ops.moe_glue import workspace_offsets
    tiles = expert_of_tile.numel()
    rows = tiles * tile_m
    parts = workspace_offsets(rows, 1, num_e, tiles)
    ws = torch.zeros(max(a + n for a, n in parts.values()), dtype=torch.int32)
    counts = torch.bincount(expert_of_tile.long(), minlength=num_e) * tile_m
    values = {"expert_of_tile": expert_of_tile, "counts": counts, "padded_start": torch.cumsum(counts, 0) - counts,
              "dest": torch.arange(rows), "ids": expert_of_tile.long().repeat_interleave(tile_m)}
    for name, value in values.items():
        at, n = parts[name]
        ws[at:at + n] = value.to(torch.int32)
    return ws.cuda()


def partial_routing(expert_of_tile: torch.Tensor, tile_m: int, num_e: int,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routing tables for sorted `expert_of_tile` in which each expert routes a random number of its rows (at least
    one, at most all): (padded_start int32 [E], counts int32 [E], routed bool [rows]), tables on the GPU."""
    tile_counts = torch.bincount(expert_of_tile.long(), minlength=num_e)
    rows_of = tile_counts * tile_m
    start = torch.cumsum(rows_of, 0) - rows_of
    counts = torch.where(rows_of > 0, (torch.rand(num_e, generator=gen) * rows_of).long().clamp(min=1), 0)
    counts[0] = rows_of[0]  # one expert (if it has tiles) routes every row
    row = torch.arange(int(rows_of.sum()))
    e = expert_of_tile.long().repeat_interleave(tile_m)
    routed = row - start[e] < counts[e]
    return start.to(torch.int32).cuda(), counts.to(torch.int32).cuda(), routed.cuda()


def run_store_routed_case(tactic, num_e: int, tiles: int, n: int, k: int, act: str = "mxfp4") -> None:
    """GEMM2's routed-rows store against the plain store: routed rows bit-identical, the other rows untouched."""
    gen = torch.Generator().manual_seed(num_e * 10 + tiles + n)
    m = tiles * tactic.tile_m
    x_in = (torch.randn(m, k, generator=gen) * 3).cuda()
    a, a_sf = mxfp4_quantize(x_in) if act == "mxfp4" else mxfp8_quantize(x_in, True, 32)
    b, b_sf = expert_weights(num_e, n, k, gen)
    expert_of_tile = torch.sort(torch.randint(0, num_e, (tiles,), generator=gen, dtype=torch.int32)).values
    start, counts, routed = partial_routing(expert_of_tile, tactic.tile_m, num_e, gen)
    want = grouped_mm_fp4(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, fmt=gemm_format(act))
    got = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    grouped_mm_fp4_launcher(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, got, routed=(start, counts),
                            fmt=gemm_format(act))()
    torch.cuda.synchronize()
    assert bool(routed.any()) and not bool(routed.all()), "the case must hold routed and padding rows"
    assert torch.equal(got[routed].view(torch.int16), want[routed].view(torch.int16))
    assert bool(got[~routed].isnan().all()), "padding rows must not be written"


def run_swiglu_quantize_case(tactic, num_e: int, tiles: int, inter: int, k: int, act: str = "mxfp4", *,
                             bias_dtype: torch.dtype | None = torch.bfloat16, activation: str = "swiglu_oai",
                             per_expert: bool = False, g1: bool = False, limit: float | None = 7.0,
                             partial: bool = False) -> None:
    """GEMM1 with the fused activation epilogue against GEMM1 (bf16 out) followed by the standalone activation
    kernel: the same bits (data and scales), and the 128x4 layout's padding scale columns zeroed. `partial`: with
    routing tables that leave rows unrouted, which must keep their previous bytes."""
    from ..formats import unswizzle_sf
    from ..ops.grouped_mm_fp4 import grouped_mm_fp4_swiglu_quantize_launcher, swiglu_quantize_outputs
    from ..ops.moe_glue import LAYOUT_CODE, glue_module

    gen = torch.Generator().manual_seed(num_e * 1000 + inter + k)
    m, n, tm = tiles * tactic.tile_m, 2 * inter, tactic.tile_m
    x_in = (torch.randn(m, k, generator=gen) * 3).cuda()
    a, a_sf = mxfp4_quantize(x_in) if act == "mxfp4" else mxfp8_quantize(x_in, True, 32)
    b, b_sf = expert_weights(num_e, n, k, gen)
    expert_of_tile = torch.sort(torch.randint(0, num_e, (tiles,), generator=gen, dtype=torch.int32)).values
    expert_of_tile[-1] = num_e - 1
    bias = None if bias_dtype is None else (torch.randn(num_e, n, generator=gen) * 2).to(bias_dtype).cuda()
    per = (lambda lo, hi: (torch.rand(num_e, generator=gen) * (hi - lo) + lo).cuda()) if per_expert else None
    alpha_e, beta_e = (per(1.0, 2.0), per(0.5, 1.5)) if per else (None, None)
    limit_e = per(3.0, 8.0) if per and limit is not None else None
    g1_e = (torch.rand(num_e, generator=gen) + 0.5).cuda() if g1 else None
    scalars = (1.702, 1.0, 0.0 if limit is None else float(limit), limit is not None or limit_e is not None)
    oai = activation == "swiglu_oai"

    # Unfused: GEMM1 writes bf16, the activation kernel quantizes.
    h = grouped_mm_fp4(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, fmt=gemm_format(act))
    want, want_sf = swiglu_quantize_outputs(m, inter, gemm_format(act), h.device)
    glue_module(h.device, act).activation(h, _activation_workspace(expert_of_tile, num_e, tm), want.view(torch.uint8),
                                          want_sf, m, 1, num_e, tm, LAYOUT_CODE["interleaved"], oai, g1_e, bias,
                                          alpha_e, beta_e, limit_e, *scalars)
    # Fused: data pre-filled with 0xAB and scales with 0xFF, so unwritten rows and padding columns show.
    got, got_sf = swiglu_quantize_outputs(m, inter, gemm_format(act), h.device)
    got.view(torch.uint8).fill_(0xAB)
    got_sf.fill_(0xFF)
    routed = torch.ones(m, dtype=torch.bool, device="cuda")
    tables = None
    if partial:
        *tables, routed = partial_routing(expert_of_tile, tm, num_e, gen)
        tables = tuple(tables)
    launch = grouped_mm_fp4_swiglu_quantize_launcher(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, got, got_sf,
                                                      routed=tables, fmt=gemm_format(act))
    launch(bias, oai, g1_e, alpha_e, beta_e, limit_e, *scalars)
    torch.cuda.synchronize()
    kb = inter // 32
    got_b, want_b = got.view(torch.uint8), want.view(torch.uint8)
    assert torch.equal(got_b[routed], want_b[routed]), f"{int((got_b[routed] != want_b[routed]).sum())} bytes differ"
    assert bool((got_b[~routed] == 0xAB).all()), "rows not routed must not be written"
    got_s, want_s = unswizzle_sf(got_sf, m, -(-kb // 4) * 4), unswizzle_sf(want_sf, m, -(-kb // 4) * 4)
    assert torch.equal(got_s[routed, :kb], want_s[routed, :kb]), \
        f"{int((got_s[routed, :kb] != want_s[routed, :kb]).sum())} scales differ"
    assert bool((got_s[~routed, :kb] == 0xFF).all()), "scales of rows not routed must not be written"
    assert not got_s[:, kb:].any(), "padding scale columns must be zero"
    assert (got_s[routed, :kb] != 0xFF).all(), "finite inputs must give finite scales"


def expert_segments(counts: list[int], tile_m: int, trailing_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing plan's layout of per-expert row `counts`: each expert's segment padded to `tile_m` (an empty expert
    has none), then `trailing_tiles` tiles naming the last expert, as the MoE's bound leaves them. Returns
    (padded_start int32 [E], expert_of_tile int32 [tiles]) on the CPU."""
    rows_of = torch.tensor([-(-c // tile_m) * tile_m for c in counts])
    start = torch.cumsum(rows_of, 0) - rows_of
    tiles = [e for e, r in enumerate(rows_of.tolist()) for _ in range(r // tile_m)] + [len(counts) - 1] * trailing_tiles
    return start.to(torch.int32), torch.tensor(tiles, dtype=torch.int32)


def run_expert_rows_case(tactic, n: int, k: int, act: str = "mxfp4") -> None:
    """grouped_mm_fp4 with expert_rows against the same call without: the counted rows bit-identical, and the padding
    rows of A (poisoned: NaN e4m3 for W4A8, the largest e2m1 codes for W4A4) not read: their output rows are the
    product of zero rows (exactly 0), where the unbounded call computes them from the poison."""
    tm = tactic.tile_m
    # Empty experts (first, middle, last), a 1-row expert, a full tile, a tile and a bit, a random partial one.
    gen = torch.Generator().manual_seed(n + k)
    counts = [0, 1, tm, 0, tm + 3, int(torch.randint(2, tm, (1,), generator=gen)), 0]
    start, expert_of_tile = expert_segments(counts, tm, trailing_tiles=2)
    m = expert_of_tile.numel() * tm
    x_in = (torch.randn(m, k, generator=gen) * 3).cuda()
    a, a_sf = mxfp4_quantize(x_in) if act == "mxfp4" else mxfp8_quantize(x_in, True, 32)
    b, b_sf = expert_weights(len(counts), n, k, gen)
    e = expert_of_tile.long().repeat_interleave(tm)
    routed = (torch.arange(m) - start.long()[e] < torch.tensor(counts)[e]).cuda()
    a.view(torch.uint8)[~routed] = 0x7F if act == "mxfp8" else 0x77
    tables = (start.cuda(), torch.tensor(counts, dtype=torch.int32, device="cuda"))
    tiles = expert_of_tile.cuda()
    want = grouped_mm_fp4(a, a_sf, b, b_sf, tiles, tactic, fmt=gemm_format(act))
    got = grouped_mm_fp4(a, a_sf, b, b_sf, tiles, tactic, fmt=gemm_format(act), expert_rows=tables)
    torch.cuda.synchronize()
    assert torch.equal(got[routed].view(torch.int16), want[routed].view(torch.int16))
    assert bool((got[~routed] == 0).all()), "A's padding rows were read"
    assert not bool((want[~routed] == 0).all()), "the unbounded call must read the poisoned padding rows"
