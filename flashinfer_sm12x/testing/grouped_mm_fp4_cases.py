# SPDX-License-Identifier: Apache-2.0
"""grouped_mm_fp4 cases shared by the SM90 emulation tests and the native SM12x tests: random expert weights, one
grouped GEMM against a float64 per-tile reference, and the bad-input checks on CUDA tensors."""

from __future__ import annotations

import pytest
import torch

from ..formats import mxfp4_dequantize, mxfp4_quantize, mxfp8_dequantize, mxfp8_quantize
from ..kernels.grouped_mm_fp4 import CANDIDATES
from ..ops.grouped_mm_fp4 import grouped_mm_fp4


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
    grouped_mm_fp4(a, a_sf, b, b_sf, expert_of_tile.cuda(), tactic, out=out)
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
        grouped_mm_fp4(a[:32], a_sf, b, b_sf, tiles, tactic)
    with pytest.raises(TypeError, match="int32"):
        grouped_mm_fp4(a, a_sf, b, b_sf, tiles.long(), tactic)
    with pytest.raises(ValueError, match="shape"):
        grouped_mm_fp4(a, a_sf, b, b_sf, torch.zeros(2, dtype=torch.int32, device="cuda"), tactic)
    with pytest.raises(ValueError, match="elements"):
        grouped_mm_fp4(a, a_sf, b, b_sf[:1], tiles, tactic)
    with pytest.raises(ValueError, match="CUDA"):
        grouped_mm_fp4(a, a_sf, b, b_sf, tiles.cpu(), tactic)
