# SPDX-License-Identifier: Apache-2.0
"""Native SM12x: the block-scaled MMA's fragment and scale-lane layouts against the CPU reference.

Runs only on an SM120/SM121 GPU (skipped elsewhere, and not counted as passing there).
"""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.formats import e2m1_decode, e8m0_decode, pack_e2m1
from flashinfer_sm12x.ops.mma_probe import mma_probe

pytestmark = pytest.mark.sm12x


def _reference(a_codes: torch.Tensor, b_codes: torch.Tensor, sfa: torch.Tensor, sfb: torch.Tensor) -> torch.Tensor:
    a = e2m1_decode(a_codes).double() * e8m0_decode(sfa).double().repeat_interleave(32, dim=1)
    b = e2m1_decode(b_codes).double() * e8m0_decode(sfb).double().repeat_interleave(32, dim=1)
    return (a @ b.T).float()


@pytest.mark.parametrize("k", [64, 128, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_matches_reference(k: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a_codes = torch.randint(0, 16, (16, k), generator=gen, dtype=torch.uint8)
    b_codes = torch.randint(0, 16, (8, k), generator=gen, dtype=torch.uint8)
    sfa = torch.randint(118, 136, (16, k // 32), generator=gen, dtype=torch.uint8)
    sfb = torch.randint(118, 136, (8, k // 32), generator=gen, dtype=torch.uint8)
    ref = _reference(a_codes, b_codes, sfa, sfb)
    out = mma_probe(*(t.cuda() for t in (pack_e2m1(a_codes), pack_e2m1(b_codes), sfa, sfb)))
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-30)


def test_probe_single_nonzero_element_lands_in_place() -> None:
    """One nonzero product per (row, col) pair pins the row/column/scale lane mapping exactly."""
    k = 64
    for row, col, kk in [(0, 0, 0), (9, 3, 33), (15, 7, 63), (8, 0, 31), (1, 6, 40)]:
        a_codes = torch.zeros(16, k, dtype=torch.uint8)
        b_codes = torch.zeros(8, k, dtype=torch.uint8)
        a_codes[row, kk], b_codes[col, kk] = 2, 3  # 1.0 * 1.5
        sfa = torch.full((16, 2), 127, dtype=torch.uint8)
        sfb = torch.full((8, 2), 127, dtype=torch.uint8)
        sfa[row, kk // 32], sfb[col, kk // 32] = 129, 126  # x4 and x0.5
        out = mma_probe(*(t.cuda() for t in (pack_e2m1(a_codes), pack_e2m1(b_codes), sfa, sfb))).cpu()
        expected = torch.zeros(16, 8)
        expected[row, col] = 1.0 * 1.5 * 4 * 0.5
        torch.testing.assert_close(out, expected)


def test_probe_rejects_bad_input_before_launch() -> None:
    ok = [torch.zeros(16, 32, dtype=torch.uint8, device="cuda"), torch.zeros(8, 32, dtype=torch.uint8, device="cuda"),
          torch.zeros(16, 2, dtype=torch.uint8, device="cuda"), torch.zeros(8, 2, dtype=torch.uint8, device="cuda")]
    with pytest.raises(TypeError):
        mma_probe(ok[0].float(), *ok[1:])
    with pytest.raises(ValueError):
        mma_probe(ok[0], ok[1][:4], *ok[2:])
    with pytest.raises(ValueError):
        mma_probe(ok[0].cpu(), *ok[1:])
