# SPDX-License-Identifier: Apache-2.0
"""The accuracy measure behind benchmarks/moe_accuracy.py (CPU, tiny shapes), and the script's CPU behaviour: a
clear error without a GPU, the module list it builds."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.moe import gpt_oss_moe_reference, route
from flashinfer_sm12x.moe.pipeline import row_plan
from flashinfer_sm12x.testing.moe_accuracy import (
    CSV_FIELDS,
    AccuracyRow,
    format_table,
    measure,
    relative_l2,
    write_csv,
)
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

ROOT = Path(__file__).resolve().parents[2]
E, TOPK, T, H, INTER = 4, 2, 6, 64, 64


def test_relative_l2_values() -> None:
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_l2(torch.tensor([3.0, 5.0]), ref) == pytest.approx(0.2, rel=1e-15)
    assert relative_l2(ref.clone(), ref) == 0.0
    assert relative_l2(-ref, ref) == pytest.approx(2.0, rel=1e-15)
    # bf16 against float64: measured in float64 (3 and 4 are exact in bf16)
    assert relative_l2(ref.bfloat16(), ref) == 0.0
    assert math.isnan(relative_l2(torch.tensor([float("nan"), 4.0]), ref))


def test_relative_l2_rejects_bad_input() -> None:
    ref = torch.ones(2, 3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        relative_l2([1.0, 2.0], ref)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        relative_l2(torch.ones(2, 3, dtype=torch.int32), ref)
    with pytest.raises(ValueError, match="shape"):
        relative_l2(torch.ones(3, 2), ref)
    with pytest.raises(ValueError, match="not all zeros"):
        relative_l2(ref, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="finite"):
        relative_l2(ref, torch.full((2, 3), float("inf")))


@pytest.fixture(scope="module")
def case() -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    raw = make_weights(E, H, INTER)
    hidden, logits = make_inputs(T, H, E)
    return raw, hidden, route(logits, TOPK)


def test_measure_separates_format_error_from_kernel_error(case) -> None:
    """A run that reproduces the quantized-activation reference exactly adds nothing to the format's error."""
    raw, hidden, routing = case

    def exact_quantized(act: str, x: torch.Tensor, r: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return gpt_oss_moe_reference(x, r, **raw, act_quant=act)

    rows = measure("tiny", raw, hidden, routing, exact_quantized)
    assert [(r.data, r.tokens, r.act, r.scheme) for r in rows] == [("tiny", T, "mxfp4", "W4A4"),
                                                                    ("tiny", T, "mxfp8", "W4A8")]
    for r in rows:
        assert r.vs_quantized_reference == 0.0
        assert r.vs_unquantized == r.format_error > 0.0
    w4a4, w4a8 = rows
    # MXFP8's 3 mantissa bits against MXFP4's 1: W4A8's activations cost several times less.
    assert w4a8.format_error < w4a4.format_error / 2


def test_measure_against_unquantized_run(case) -> None:
    """A run without activation quantization scores 0 against the unquantized reference and the format's error
    against the quantized one."""
    raw, hidden, routing = case
    rows = measure("tiny", raw, hidden, routing, lambda act, x, r: gpt_oss_moe_reference(x, r, **raw),
                   acts=("mxfp8",))
    (row,) = rows
    assert row.vs_unquantized == 0.0
    # Same difference, measured once relative to each reference: ||u - q|| = e_q * ||q|| = e_u * ||u||.
    unquantized = gpt_oss_moe_reference(hidden, routing, **raw)
    quantized = gpt_oss_moe_reference(hidden, routing, **raw, act_quant="mxfp8")
    assert row.vs_quantized_reference * float(quantized.norm()) == pytest.approx(
        row.format_error * float(unquantized.norm()), rel=1e-12)
    assert row.format_error > 0.0


def test_measure_rejects_bad_input(case) -> None:
    raw, hidden, routing = case
    with pytest.raises(ValueError, match="activation formats"):
        measure("tiny", raw, hidden, routing, lambda act, x, r: x, acts=("nvfp4",))
    with pytest.raises(ValueError, match="shape"):  # an output of the wrong shape is not measured
        measure("tiny", raw, hidden, routing, lambda act, x, r: x[:, :8])


def test_table_and_csv(tmp_path: Path) -> None:
    rows = [AccuracyRow("bench_moe", 16, "mxfp4", 0.25, 0.01, 0.249),
            AccuracyRow("bench_moe", 16, "mxfp8", 0.05, 0.002, 0.0499)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3 and "rel L2 vs unquantized act" in lines[0]
    assert lines[1].split()[:4] == ["bench_moe", "16", "mxfp4", "W4A4"] and "2.500e-01" in lines[1]
    assert lines[2].split()[:4] == ["bench_moe", "16", "mxfp8", "W4A8"] and "5.000e-02" in lines[2]
    path = tmp_path / "results" / "acc.csv"
    write_csv(rows, path, "Test GPU")
    with open(path, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert tuple(got[0]) == CSV_FIELDS
    assert [(g["device"], g["act"], float(g["vs_unquantized"]), g["scheme"]) for g in got] == [
        ("Test GPU", "mxfp4", 0.25, "W4A4"), ("Test GPU", "mxfp8", 0.05, "W4A8")]


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # CPU-only whatever the machine
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "moe_accuracy.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_without_gpu_fails_clearly(tmp_path: Path) -> None:
    result = _script("--csv", str(tmp_path / "out.csv"))
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_script_lists_the_modules_fused_moe_loads() -> None:
    result = _script("--arch", "sm_90a", "--list-modules", "--tokens", "16,256")
    assert result.returncode == 0, result.stderr
    target = parse_target("sm_90a")
    want = []
    for act, fmt in (("mxfp4", "mxfp4"), ("mxfp8", "mxfp8_mxfp4")):
        for t in (16, 256):
            spec = GROUPED.spec(target, fmt, row_plan(t, 4, 32, fmt, None, target).tactic, torch.bfloat16)
            line = f"module grouped_mm_fp4/{spec.group}/sm_90a"
            if line not in want:
                want.append(line)
        want.append(f"module moe_glue/{act}/sm_90a")
    assert result.stdout.splitlines() == want
