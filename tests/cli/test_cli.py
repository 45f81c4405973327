# SPDX-License-Identifier: Apache-2.0
"""doctor, cache list/clear and prebuild through the real CLI entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flashinfer_sm12x.cli import main
from flashinfer_sm12x.doctor import diagnose


def test_doctor_exits_0_on_this_cpu_machine(cache_root: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FLASHINFER_SM12X_ARCH", "FLASHINFER_CUDA_ARCH_LIST", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)
    if torch.cuda.is_available():
        pytest.skip("this test describes a CPU-only machine")
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "CPU-only" in out and "Cannot do here" in out and "cuDNN" in out
    assert re.search(r"JIT self-test\s+ok", out) and re.search(r"CUTLASS\s+4\.5", out)


def test_console_script_runs_as_module() -> None:
    out = subprocess.run([sys.executable, "-m", "flashinfer_sm12x", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout and "prebuild" in out.stdout


@pytest.mark.parametrize(("var", "value"), [("TORCH_CUDA_ARCH_LIST", "8.0 12.0"),
                                            ("FLASHINFER_CUDA_ARCH_LIST", "12.1"),
                                            ("FLASHINFER_SM12X_ARCH", "sm_120")])
def test_doctor_names_missing_suffix_and_fix(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    problems = diagnose(selftest=False).problems
    assert any("'a'/'f' suffix" in p and "Fix" in p for p in problems), problems


def test_doctor_nvcc_too_old(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.85'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FLASHINFER_SM12X_NVCC", str(fake))
    monkeypatch.setenv("CUDA_HOME", "/usr/local/cuda")
    problems = diagnose(selftest=False).problems
    assert any("cannot build SM120" in p and "CUDA >= 12.9" in p for p in problems), problems


def test_doctor_relative_env_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHINFER_SM12X_CUTLASS_DIR", "cutlass/include")
    problems = diagnose(selftest=False).problems
    assert any("relative path" in p for p in problems), problems


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, cc: tuple[int, int], cudnn: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cc)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a: SimpleNamespace(name="NVIDIA GB10", multi_processor_count=48))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: cudnn)


def test_doctor_sm121_with_sm120_only_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, (12, 1), 91500)
    monkeypatch.setenv("FLASHINFER_SM12X_ARCH", "sm_120a")
    problems = diagnose(selftest=False).problems
    assert any("never loaded" in p and "sm_121a" in p for p in problems), problems


def test_doctor_old_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, (12, 0), 91000)
    monkeypatch.delenv("FLASHINFER_SM12X_ARCH", raising=False)
    report = diagnose(selftest=False)
    assert any("9.14" in p and "nvidia-cudnn" in p for p in report.problems), report.problems
    assert any("native SM12x" in c for c in report.can)


@pytest.mark.compile_proof
def test_prebuild_list_clear(cache_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prebuild", "--arch", "sm_120a,sm_121a", "--ops", "mma_probe"]) == 0
    assert "prebuild: 6 built, 0 cached, 0 from kernel bundles, 0 failed" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("mma_probe_mxfp4_") == 6 and "sm_121a" in out and "MiB" in out
    assert main(["cache", "clear", "--arch", "sm_120a"]) == 0
    assert "3 removed" in capsys.readouterr().out
    assert main(["cache", "clear", "--all"]) == 0
    main(["cache", "list"])
    assert "(empty)" in capsys.readouterr().out
