# SPDX-License-Identifier: Apache-2.0
"""The grouped heuristic's wave rule (kernels/grouped_mm_fp4.py `preference`, `moe_tactics`) on the CPU: which tile
each MoE GEMM gets on an RTX 5090 (170 SMs), an RTX PRO 6000 Blackwell (188) and a DGX Spark (48)."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels import grouped_mm_fp4 as g
from flashinfer_sm12x.kernels.family import Tactic

M64, PP128, CO128 = g.CANDIDATES
W8PP64, W8CO128, W8PP32 = g.W4A8_CANDIDATES
NARROW = Tactic("pingpong", 64, 64, 128)  # not shipped (fails its compile proof): the rule's what-if decode tile
HP = IP = 2944  # GPT-OSS's 2880 padded to 128
SM120, SM121 = parse_target("sm_120a"), parse_target("sm_121a")


def _first(menu: tuple[Tactic, ...], fmt: str, m: int, n: int, groups: int, sms: int) -> Tactic:
    return min(menu, key=lambda t: g.preference(t, fmt, m, n, HP, groups, sms))


def test_grid_ctas_and_sm_fill_of_gpt_oss_decode() -> None:
    # T = 1, top-4 over 32 experts: 4 experts x one 64-row tile; GEMM2 N = 2944 -> 23 tiles of 128, GEMM1 46.
    assert g.grid_ctas(M64, 4, HP, 32) == 92 and g.grid_ctas(M64, 4, 2 * IP, 32) == 184
    assert g.grid_ctas(NARROW, 4, HP, 32) == 184
    assert g.grid_ctas(W8PP32, 4, HP, 32) == 4 * 92  # 128-row tiles: still one per expert at T = 1
    # The padded bound as the row plan sizes it: 256 routed rows over 32 experts in 64-row tiles -> 2272 -> 36 tiles.
    assert g.padded_rows_bound(256, 32, 64) == 2304 and g.grid_ctas(M64, 256, HP, 32) == 36 * 23
    assert g.grid_ctas(M64, 4, 0, 32) == 0  # N unknown
    assert g.sm_fill(92, 170) == (1, pytest.approx(92 / 170))
    assert g.sm_fill(184, 170) == (2, pytest.approx(184 / 340))
    assert g.sm_fill(184, 188) == (1, pytest.approx(184 / 188))
    assert g.sm_fill(0, 170) == (0, 0.0)


@pytest.mark.parametrize(("sms", "want"), [(170, M64), (188, NARROW), (48, M64)])
def test_a_narrow_decode_tile_is_taken_only_where_it_fills_the_sms(sms: int, want: Tactic) -> None:
    """GEMM2 at T = 1 with a 64x64 tile on the menu: on 188 SMs its 184 CTAs are one wave (0.98 busy, half the
    critical path of 64x128's 92); on 170 SMs they are two waves (a 14-CTA tail: the same critical path as 92 CTAs
    of 128 columns, so the wider tile wins the tie); on 48 SMs nothing is decode-sized (4 waves vs 2 of twice the
    width): the wider tile."""
    menu = (M64, PP128, CO128, NARROW)
    assert _first(menu, "mxfp4", 4, HP, 32, sms) == want
    assert _first(menu, "mxfp4", 4, HP, 128, sms) == want  # GPT-OSS-120B at T = 1: the same 4 experts' tiles
    # GEMM1 (N = 5888): 184 CTAs of 64x128 are beyond one wave everywhere but on 188 SMs, where they fill it.
    assert _first(menu, "mxfp4", 4, 2 * IP, 32, sms) == M64


@pytest.mark.parametrize(("sms", "gemm2"), [(170, W8PP32), (188, W8PP64), (48, W8PP64)])
def test_w4a8_gemm2_at_t1_takes_the_tile_with_the_shortest_critical_path(sms: int, gemm2: Tactic) -> None:
    """W4A8 at T = 1: GEMM2's 128x64 grid is 184 CTAs. On 170 SMs that is two waves of 64 columns (128 per SM)
    and 128x32's 368 CTAs are three of 32 (96): 128x32. On 188 SMs 128x64 is one wave (64), tied by 128x32's two
    (64) and 0.98 busy either way: the schedule rule keeps 128x64. Cooperative 128x128 (one wave of 128) never
    wins. GEMM1 must serve the fused activation (tile_n % 64 == 0) and keeps 128x64."""
    gemm1, got = g.moe_tactics(4, 32, "mxfp8_mxfp4", SM120, sms, hidden_padded=HP, inter_padded=IP)
    assert (gemm1, got) == (W8PP64, gemm2)
    assert gemm1.tile_m == got.tile_m
    assert g.heuristic(4, HP, IP, "mxfp8_mxfp4", SM120, sms, groups=32)[0] == gemm2


@pytest.mark.parametrize("sms", [170, 188, 48])
@pytest.mark.parametrize("num_experts", [32, 128])
@pytest.mark.parametrize("num_t", [1, 8, 64])
def test_w4a4_keeps_the_64_row_tile_for_both_gemms(sms: int, num_experts: int, num_t: int) -> None:
    """Every shipped W4A4 tile is 128 wide: the wave rule has no narrower tile to offer, the 64-row tile stays."""
    target = SM121 if sms == 48 else SM120
    assert g.moe_tactics(4 * num_t, num_experts, "mxfp4", target, sms, hidden_padded=HP,
                         inter_padded=IP) == (M64, M64)


def test_beyond_one_wave_the_schedule_rules_decide() -> None:
    """T = 64 over 32 experts (36 M tiles of 128 rows): every grid is many waves; Cooperative 128x128 has fewer
    waves than Pingpong 128x64 but the schedule rule (more stages in flight) comes first."""
    for sms in (170, 188, 48):
        assert _first(g.W4A8_CANDIDATES, "mxfp8_mxfp4", 256, HP, 32, sms) == W8PP64
        assert _first(g.CANDIDATES, "mxfp4", 256, HP, 32, sms) == M64
        # Prefill sizes: the m rules as before (128-row Pingpong for W4A4, Cooperative for W4A8 at 512 rows/expert).
        assert _first(g.CANDIDATES, "mxfp4", 32768, HP, 32, sms) == PP128
        assert _first(g.W4A8_CANDIDATES, "mxfp8_mxfp4", 32768, HP, 32, sms) == W8CO128


@pytest.mark.parametrize("fmt", g.FORMATS)
@pytest.mark.parametrize("m", [4, 64, 256, 4000, 32768])
def test_unknown_n_keeps_the_m_rules(fmt: str, m: int) -> None:
    """n = 0 (the caller does not know the GEMM's width) leaves the wave terms out: one tactic for both GEMMs, the
    same for every SM count."""
    orders = {sms: g.heuristic(m, 0, 0, fmt, SM120, sms, groups=32) for sms in (170, 188, 48)}
    assert len(set(orders.values())) == 1
    assert g.moe_tactics(m, 32, fmt, SM120, 170) == (orders[170][0], orders[170][0])


def test_preference_is_a_pure_function_of_its_arguments() -> None:
    key = g.preference(M64, "mxfp4", 4, HP, IP, 32, 170)
    assert key == g.preference(M64, "mxfp4", 4, HP, IP, 32, 170)
    assert key != g.preference(M64, "mxfp4", 4, HP, IP, 32, 188)  # the idle fraction differs


def test_moe_tactics_default_sm_count_is_the_targets_assumption() -> None:
    assert g.moe_tactics(4, 32, "mxfp8_mxfp4", SM120, hidden_padded=HP, inter_padded=IP) == (W8PP64, W8PP32)  # 170
    assert g.moe_tactics(4, 32, "mxfp8_mxfp4", SM121, hidden_padded=HP, inter_padded=IP) == (W8PP64, W8PP64)  # 48
