# SPDX-License-Identifier: Apache-2.0
"""The GPU workload scripts' plans, checked on the CPU: which cases scripts/sanitize_mm_fp4.py and
scripts/sanitize_moe.py run under compute-sanitizer (W4A8: every shipped tactic), the modules they build first,
and flashinfer_sm12x.testing.workloads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.kernels.mm_fp4 import FAMILY as DENSE
from flashinfer_sm12x.testing.workloads import unique_specs, workload_target

ROOT = Path(__file__).resolve().parent.parent
SM90A = parse_target("sm_90a")


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # CPU-only whatever the machine
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _lines(result: subprocess.CompletedProcess, prefix: str) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line[len(prefix):] for line in result.stdout.splitlines() if line.startswith(prefix)]


def test_dense_w4a8_runs_every_shipped_tactic_on_ragged_shapes() -> None:
    cases = _lines(_script("sanitize_mm_fp4.py", "--arch", "sm_90a", "--formats", "mxfp8_mxfp4", "--list-cases"),
                   "case ")
    shipped = DENSE.shipped("mxfp8_mxfp4", SM90A)
    seen = set()
    for case in cases:
        fmt, tactic_name, m, n, k = re.fullmatch(r"(\S+) (\S+) m=(\d+) n=(\d+) k=(\d+)", case).groups()
        tactic = next(t for t in shipped if t.name == tactic_name)
        assert fmt == "mxfp8_mxfp4" and int(k) % 128 == 0
        if int(m) % tactic.tile_m and int(n) % tactic.tile_n:
            seen.add(tactic)
    assert seen == set(shipped)


def test_dense_modules_listed_once() -> None:
    result = _script("sanitize_mm_fp4.py", "--arch", "sm_90a", "--list-cases")
    modules = _lines(result, "module ")
    assert len(modules) == len(set(modules))
    assert {m for m in modules if "mxfp8_mxfp4" in m} == {
        f"mm_fp4/mxfp8_mxfp4_bfloat16_{t.name}/sm_90a" for t in DENSE.shipped("mxfp8_mxfp4", SM90A)}


def test_moe_w4a8_plan() -> None:
    result = _script("sanitize_moe.py", "--arch", "sm_90a", "--act", "mxfp8", "--list-cases")
    cases, modules = _lines(result, "case "), _lines(result, "module ")
    shipped = GROUPED.shipped("mxfp8_mxfp4", SM90A)
    for tactic in shipped:
        assert any(c.startswith(f"grouped_mm_fp4 mxfp8_mxfp4 {tactic.name} ") for c in cases)
        assert any(c.startswith(f"fused_moe kernels w4a8 {tactic.name} ") and "E=32 (skewed ids)" in c
                   for c in cases)
    assert any(c.startswith("fused_moe reference w4a8") for c in cases)
    assert any(c.startswith("cutlass_fused_moe w4a8") for c in cases)
    assert modules == [*(f"grouped_mm_fp4/mxfp8_mxfp4_bfloat16_{t.name}/sm_90a" for t in shipped),
                       "moe_glue/mxfp8/sm_90a", "quantize/mxfp8/sm_90a"]


def test_scripts_refuse_bad_arguments() -> None:
    glue = _script("sanitize_moe.py", "--arch", "sm_90a", "--act", "mxfp8", "--glue-only", "--list-cases")
    assert glue.returncode == 2 and "--glue-only" in glue.stderr
    no_gpu = _script("sanitize_mm_fp4.py", "--list-cases")
    assert no_gpu.returncode == 2 and "--arch" in no_gpu.stderr
    fmt = _script("sanitize_mm_fp4.py", "--arch", "sm_90a", "--formats", "fp8", "--list-cases")
    assert fmt.returncode == 2 and "fp8" in fmt.stderr


def test_unique_specs_keeps_first_of_each_module() -> None:
    tactic = GROUPED.shipped("mxfp8_mxfp4", SM90A)[0]
    a = GROUPED.spec(SM90A, "mxfp8_mxfp4", tactic, torch.bfloat16)
    b = GROUPED.spec(SM90A, "mxfp4", GROUPED.shipped("mxfp4", SM90A)[0], torch.bfloat16)
    again = GROUPED.spec(SM90A, "mxfp8_mxfp4", tactic, torch.bfloat16)
    assert unique_specs([a, b, again, b]) == [a, b]


def test_workload_target() -> None:
    assert workload_target("sm_90a") == SM90A
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--arch"):
            workload_target(None)


def test_prebuild_for_tests_honours_the_parallel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU test modules prebuild through one helper: N builds at once, 0 defers to first use, a failure raises."""
    from flashinfer_sm12x.errors import BuildError
    from flashinfer_sm12x.testing import workloads

    calls = []
    monkeypatch.setattr(workloads, "build_modules", lambda specs, label, jobs: calls.append(jobs) or True)
    monkeypatch.setenv("FLASHINFER_SM12X_PREBUILD_PARALLEL", "0")
    workloads.prebuild_for_tests(["spec"], "t")
    assert calls == []
    monkeypatch.setenv("FLASHINFER_SM12X_PREBUILD_PARALLEL", "6")
    workloads.prebuild_for_tests(["spec"], "t")
    assert calls == [6]
    monkeypatch.setattr(workloads, "build_modules", lambda specs, label, jobs: False)
    with pytest.raises(BuildError, match="failed"):
        workloads.prebuild_for_tests(["spec"], "t")
