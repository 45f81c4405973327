# SPDX-License-Identifier: Apache-2.0
"""Two or more GPUs in one host: every public op called on cuda:1 while cuda:0 is current (results bit-equal to the
same call on cuda:0, mixed-device arguments refused with a typed error before launch), and the MoE's TP / EP shards
combined over NCCL (scripts/multi_gpu.py). Skipped on machines with fewer than two GPUs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "multi_gpu.py"

pytestmark = pytest.mark.cuda


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """>= 2 GPUs that run the kernels: SM12x natively, SM90 through the emulated MMA atom."""
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        pytest.skip(f"needs >= 2 CUDA GPUs in one host, found {count} (not counted as passing)")
    caps = {torch.cuda.get_device_capability(i) for i in range(2)}
    if caps == {(9, 0)}:
        monkeypatch.setenv("FLASHINFER_SM12X_EMULATE", "1")
    elif any(major != 12 for major, _ in caps):
        pytest.skip(f"needs SM120/SM121 GPUs, or SM90 with the emulation; found capabilities {sorted(caps)}")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("multi_gpu_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ops_on_a_device_other_than_the_current_one(two_gpus: None) -> None:
    checks = _script().device_index_checks(log=lambda line: None)
    assert len(checks) == 12  # 7 ops on cuda:1, 5 mixed-device calls
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
    assert not failed, "\n".join(failed)


def test_shards_over_nccl_equal_the_full_layer(two_gpus: None, tmp_path: Path) -> None:
    # Small shapes (the full GPT-OSS grid is the script's default); both TP and EP with E = 9 split 4 + 5.
    cmd = [sys.executable, str(SCRIPT), "--spawn", "2", "--hidden", "256", "--inter", "384", "--experts", "9",
           "--tokens", "0", "1", "7", "64", "--results", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "24/24 comparisons passed" in run.stdout  # 3 modes x 2 acts x 4 T
