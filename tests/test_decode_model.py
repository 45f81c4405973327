# SPDX-License-Identifier: Apache-2.0
"""benchmarks/decode_model.py (a model of one GPT-OSS MoE layer per decode step): properties its README table rests
on. CPU only."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("decode_model", Path(__file__).parents[1] / "benchmarks/decode_model.py")
dm = importlib.util.module_from_spec(_SPEC)
sys.modules["decode_model"] = dm  # its dataclasses resolve annotations through the module
_SPEC.loader.exec_module(dm)

CONFIGS = [(chip, model, act) for chip in dm.CHIPS for model in ("gpt-oss-20b", "gpt-oss-120b") for act in dm.ACTS]


def _total(rows: list[dict]) -> dict:
    (total,) = [r for r in rows if r["kernel"] == "total"]
    return total


@pytest.mark.parametrize(("chip", "model", "act"), CONFIGS)
def test_bytes_and_floor_grow_with_tokens(chip: str, model: str, act: str) -> None:
    totals = [_total(dm.model_rows(chip, model, act, t)) for t in range(1, 65)]
    for prev, cur in zip(totals, totals[1:], strict=False):
        assert cur["dram_bytes"] >= prev["dram_bytes"], (prev["tokens"], cur["tokens"])
        assert cur["floor_bytes"] >= prev["floor_bytes"]
        assert cur["weight_bytes"] >= prev["floor_bytes"]  # the kernels read at least the active experts


def test_weight_floor_is_the_active_experts_bytes_over_bandwidth() -> None:
    # One expert as the kernels read it (H = I = 2880 padded to 2944): w13 [5888, 1472] + 128x4 scales [5888, 92],
    # b1 bf16 [5888], w2 [2944, 1472] + scales [2944, 92], b2's 2880 unpadded columns.
    per_expert = 5888 * 1472 + 5888 * 92 + 5888 * 2 + 2944 * 1472 + 2944 * 92 + 2880 * 2
    assert sum(dm.expert_param_bytes(dm.shape_of("gpt-oss-20b")).values()) == per_expert
    # T = 1: exactly top-4 experts.
    total = _total(dm.model_rows("rtx5090", "gpt-oss-20b", "mxfp4", 1))
    assert total["active_experts"] == 4
    assert total["floor_us"] == pytest.approx(4 * per_expert / 1792e3, rel=1e-4)
    # T = 8 over 128 experts: E * (1 - (1 - k/E)^T) distinct experts on average.
    total = _total(dm.model_rows("dgx-spark", "gpt-oss-120b", "mxfp8", 8))
    active = 128 * (1 - (1 - 4 / 128) ** 8)
    assert total["active_experts"] == pytest.approx(active, abs=1e-3)
    assert total["floor_us"] == pytest.approx(active * per_expert / 273e3, rel=1e-4)
    assert total["floor_fraction"] == pytest.approx(total["floor_us"] / total["us"], rel=1e-3)


def test_gemm_waves_at_t1_on_a_5090() -> None:
    rows = {r["stage"]: r for r in dm.model_rows("rtx5090", "gpt-oss-20b", "mxfp4", 1)}
    assert rows["GEMM2"]["tactic"] == "pingpong_64x128x128"  # the heuristic's decode tile
    # GEMM2: 4 experts x one 64-row tile, N = 2944 / 128 = 23 tiles: 92 CTAs, 0.54 of 170 SMs.
    assert rows["GEMM2"]["ctas"] == 4 * 23
    assert rows["GEMM2"]["waves"] == pytest.approx(92 / 170, abs=1e-4)
    assert rows["GEMM2"]["tail_fill"] == pytest.approx(0.5412, abs=1e-4)
    # GEMM1: N = 2 * 2944 = 5888 -> 46 tiles: 184 CTAs, a 14-CTA tail wave.
    assert rows["GEMM1"]["ctas"] == 4 * 46
    assert rows["GEMM1"]["waves"] == pytest.approx(184 / 170, abs=1e-4)


def test_tail_wave_costs_a_full_wave_of_mma() -> None:
    chip = dm.CHIPS["rtx5090"]
    one = dm.KernelCost("k", "GEMM1", chip.sms, 1, 1e9, 1.0, mma_flops=chip.sms * 1e9, tflops=chip.fp4_tflops)
    more = dm.KernelCost("k", "GEMM1", chip.sms + 1, 1, 1e9, 1.0, mma_flops=(chip.sms + 1) * 1e9,
                         tflops=chip.fp4_tflops)
    t_one, t_more = dm.kernel_time(one, chip, 0.0), dm.kernel_time(more, chip, 0.0)
    assert t_more["mma_us"] == pytest.approx(2 * t_one["mma_us"])  # one CTA more: a second wave
    assert t_one["mma_us"] == pytest.approx(chip.sms * 1e9 / (chip.fp4_tflops * 1e6))  # a full wave: the peak rate
    # Memory: a full wave streams at the chip's bandwidth; a lone CTA at its in-flight bytes over the latency.
    mem = dm.KernelCost("k", "GEMM2", chip.sms, 1, 1e9, 1.792e9)
    assert dm.kernel_time(mem, chip, 0.0)["mem_us"] == pytest.approx(1e3)
    lone = dm.KernelCost("k", "GEMM2", 1, 1, 64e3, 64e3)
    assert dm.kernel_time(lone, chip, 0.0, dram_latency_us=2.0)["mem_us"] == pytest.approx(2.0)


@pytest.mark.parametrize(("chip", "model", "act"), CONFIGS)
@pytest.mark.parametrize("num_t", [1, 8, 64])
def test_total_is_the_sum_of_the_kernels(chip: str, model: str, act: str, num_t: int) -> None:
    rows = dm.model_rows(chip, model, act, num_t, launch_floor_us=2.5)
    kernels, total = [r for r in rows if r["kernel"] != "total"], _total(rows)
    for key in ("us", "mem_us", "mma_us", "launch_us"):
        assert total[key] == pytest.approx(sum(r[key] for r in kernels), abs=1e-3)
    for key in ("dram_bytes", "weight_bytes", "launches", "ctas"):
        assert total[key] == sum(r[key] for r in kernels)
    assert total["launch_us"] == pytest.approx(2.5 * len(kernels))
    assert all(r["us"] >= r["launch_us"] for r in kernels)


def test_launches_follow_the_pipelines_plan_scatter_line() -> None:
    from flashinfer_sm12x.ops.moe_glue import fused_plan_scatter_serves

    for chip_key, chip in dm.CHIPS.items():
        for num_t in (1, 8, 12, 13, 16, 32, 33, 64):
            rows = dm.model_rows(chip_key, "gpt-oss-120b", "mxfp8", num_t)
            fused = fused_plan_scatter_serves(num_t, 4, 128, chip.sms)
            assert _total(rows)["launches"] == (4 if fused else 5), (chip_key, num_t)
            assert [r["kernel"] for r in rows][0] == ("plan_scatter" if fused else "plan")
    # A DGX Spark's 48 SMs hold T*k <= 48 plan_scatter CTAs in one wave: T = 12 is one kernel, T = 13 two.
    assert _total(dm.model_rows("dgx-spark", "gpt-oss-20b", "mxfp4", 12))["launches"] == 4
    assert _total(dm.model_rows("dgx-spark", "gpt-oss-20b", "mxfp4", 13))["launches"] == 5


def test_unfused_pipeline_adds_the_activation_kernel_and_bytes() -> None:
    fused = dm.model_rows("rtx-pro-6000", "gpt-oss-20b", "mxfp4", 8)
    unfused = dm.model_rows("rtx-pro-6000", "gpt-oss-20b", "mxfp4", 8, fused_epilogue=False)
    assert "activation" not in [r["kernel"] for r in fused]
    assert [r["kernel"] for r in unfused] == ["plan_scatter", "GEMM1", "activation", "GEMM2", "finalize", "total"]
    assert _total(unfused)["dram_bytes"] > _total(fused)["dram_bytes"]
    assert _total(unfused)["us"] > _total(fused)["us"]


def test_padding_rows_are_computed_and_w4a8_runs_at_half_rate() -> None:
    # T = 1, W4A8: 4 experts x one 128-row tile (124 padding rows each) at the FP8 rate (half the FP4 rate).
    rows = {r["stage"]: r for r in dm.model_rows("rtx5090", "gpt-oss-20b", "mxfp8", 1)}
    assert rows["GEMM2"]["rows_computed"] == 512 and rows["GEMM2"]["routed_rows"] == 4
    assert rows["GEMM2"]["mma_gflop"] == pytest.approx(2 * 512 * 2944 * 2944 / 1e9, abs=1e-3)
    assert rows["GEMM2"]["padding_bytes"] == 0  # A's padding rows are bounded away (zero-filled, not read)
    assert dm.CHIPS["rtx5090"].fp8_tflops == dm.CHIPS["rtx5090"].fp4_tflops / 2
    w4a4 = {r["stage"]: r for r in dm.model_rows("rtx5090", "gpt-oss-20b", "mxfp4", 1)}
    assert w4a4["GEMM2"]["rows_computed"] == 256


def test_expected_used_tiles_counts_whole_tiles_per_expert() -> None:
    assert dm.expected_used_tiles(1, 32, 4, 64) == pytest.approx(4.0)
    # 64 tokens over 2 experts at top-2: both take all 64 rows: one 64-row tile or two 32-row tiles each.
    assert dm.expected_used_tiles(64, 2, 2, 64) == pytest.approx(2.0)
    assert dm.expected_used_tiles(64, 2, 2, 32) == pytest.approx(4.0)
    assert dm.expected_active_experts(64, 32, 4) == pytest.approx(32 * (1 - (7 / 8) ** 64))
    assert math.isclose(dm.p_expert_hit(1, 128, 4), 4 / 128)


def test_cli_writes_the_csv_labelled_as_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "decode_model.csv"
    assert dm.main(["--chips", "rtx5090,dgx-spark", "--models", "gpt-oss-20b", "--tokens", "1,64",
                    "--launch-floor-us", "4", "--csv", str(out), "--png", str(tmp_path / "d.png")]) == 0
    printed = capsys.readouterr().out
    assert "MODEL, not a measurement" in printed and "RTX 5090" in printed and "DGX Spark" in printed
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = {"source", "chip", "model", "experts", "act", "tokens", "kernel", "stage", "tactic", "launches", "ctas",
            "waves", "tail_fill", "dram_bytes", "weight_bytes", "padding_bytes", "mma_gflop", "mem_us", "mma_us",
            "launch_us", "us", "active_experts", "floor_bytes", "floor_us", "floor_fraction", "rows_computed",
            "routed_rows"}
    assert want <= set(rows[0])
    assert {r["source"] for r in rows} == {"model"}
    assert len([r for r in rows if r["kernel"] == "total"]) == 2 * 1 * 2 * 2  # chips x models x acts x T
    assert {float(r["launch_us"]) for r in rows if r["kernel"] != "total"} == {4.0}


def test_cli_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        dm.main(["--chips", "rtx4090", "--csv", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit):
        dm.main(["--acts", "mxfp4,mxfp8", "--tactic", "pingpong_64x128x128", "--csv", str(tmp_path / "x.csv")])


def test_gemm_fill_rows_compare_the_single_and_per_gemm_tactics() -> None:
    """Each GEMM's grid under the single tactic (the rows alone), the per-GEMM choice and the 64x64 what-if."""
    rows = dm.gemm_fill_rows("rtx5090", "gpt-oss-20b", "mxfp8", 1)
    by = {(r["policy"], r["gemm"]): r for r in rows}
    assert {r["source"] for r in rows} == {"model"} and "what_if_64x64" not in {r["policy"] for r in rows}  # W4A8
    assert by[("single", "GEMM2")]["tactic"] == "pingpong_128x64x128" and by[("single", "GEMM2")]["ctas"] == 184
    assert by[("per_gemm", "GEMM2")]["tactic"] == "pingpong_128x32x128" and by[("per_gemm", "GEMM2")]["ctas"] == 368
    assert by[("per_gemm", "GEMM2")]["waves"] == 3 and by[("per_gemm", "GEMM2")]["fill"] == pytest.approx(368 / 510,
                                                                                                           abs=1e-4)
    assert by[("per_gemm", "GEMM2")]["us"] < by[("single", "GEMM2")]["us"]  # modelled: MMA-bound on padding rows
    assert by[("per_gemm", "GEMM1")]["tactic"] == by[("single", "GEMM1")]["tactic"] == "pingpong_128x64x128"
    # W4A4 on a PRO 6000: the shipped tiles are all 128 wide (92 CTAs, 0.49 busy); a 64x64 tile would fill a wave.
    w4a4 = {(r["policy"], r["gemm"]): r for r in dm.gemm_fill_rows("rtx-pro-6000", "gpt-oss-120b", "mxfp4", 1)}
    assert w4a4[("per_gemm", "GEMM2")]["ctas"] == 92 and w4a4[("per_gemm", "GEMM2")]["idle_sms"] == 188 - 92
    assert w4a4[("what_if_64x64", "GEMM2")]["tactic"] == "pingpong_64x64x128"
    assert w4a4[("what_if_64x64", "GEMM2")]["fill"] == pytest.approx(184 / 188, abs=1e-4)


def test_model_rows_name_each_gemms_tactic() -> None:
    rows = {r["stage"]: r for r in dm.model_rows("rtx5090", "gpt-oss-20b", "mxfp8", 1)}
    assert rows["GEMM1"]["tactic"] == "pingpong_128x64x128" and rows["GEMM2"]["tactic"] == "pingpong_128x32x128"
    assert rows["GEMM2"]["ctas"] == 4 * 92
    assert rows["total"]["tactic"] == "pingpong_128x64x128 / pingpong_128x32x128"


def test_cli_writes_the_gemm_fill_csv_beside_the_model(tmp_path: Path) -> None:
    out = tmp_path / "decode_model.csv"
    assert dm.main(["--chips", "rtx-pro-6000", "--models", "gpt-oss-120b", "--tokens", "1,8", "--csv", str(out),
                    "--png", str(tmp_path / "d.png")]) == 0
    with open(tmp_path / "decode_model_gemm_fill.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["source"] for r in rows} == {"model"} and {r["gemm"] for r in rows} == {"GEMM1", "GEMM2"}
    assert {r["policy"] for r in rows} == set(dm.POLICIES)
    assert len(rows) == 2 * 2 * (3 + 2)  # T x GEMMs x (W4A4's three policies + W4A8's two)
