# SPDX-License-Identifier: Apache-2.0
"""scripts/sm12x_suite.sh (rung 4 in one command): what it would run, checked without a GPU, and its refusal on a
machine without an SM120/SM121 GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "scripts" / "sm12x_suite.sh"


def _run(*stages: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUITE), *stages], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_run_lists_every_stage_and_each_step_names_real_scripts_and_flags() -> None:
    done = _run(DRY_RUN="1", QUICK="1")
    assert done.returncode == 0, done.stderr
    steps = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert steps["tests"].endswith("-m 'sm12x or cuda' tests")
    for name in ("memcheck_mm_fp4", "memcheck_moe_w4a4", "memcheck_moe_w4a8", "memcheck_quantize"):
        assert steps[name].startswith("compute-sanitizer --tool memcheck --error-exitcode 1 ")
    assert steps["racecheck_moe_glue"].startswith("compute-sanitizer --tool racecheck")
    assert {"bench_mm_fp4", "bench_moe", "bench_moe_glue", "bench_quantize", "bench_host", "moe_accuracy"} <= set(steps)
    for command in steps.values():
        for part in command.split(" && "):
            scripts = re.findall(r"\S+\.py", part)
            if not scripts:
                continue
            source = (ROOT / scripts[0]).read_text()
            for flag in re.findall(r"\s(--[a-z0-9-]+)", part.split(scripts[0], 1)[1]):
                assert f'"{flag}"' in source, f"{scripts[0]} has no {flag}"


def test_stages_can_be_chosen_and_unknown_ones_are_refused() -> None:
    done = _run("bench", DRY_RUN="1")
    assert done.returncode == 0 and all(line.startswith(("bench_", "moe_accuracy")) for line in done.stdout.split("\n")
                                        if line)
    refused = _run("benchmarks", DRY_RUN="1")
    assert refused.returncode == 2 and "unknown stage 'benchmarks'" in refused.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the suite would run")
def test_refuses_without_an_sm12x_gpu_and_runs_nothing() -> None:
    done = _run("tests")
    assert done.returncode == 2
    assert "needs an SM120/SM121 GPU" in done.stdout and "no CUDA GPU" in done.stderr
