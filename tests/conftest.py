# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures. GPU tests are marked (cuda / sm12x / emulation) and skip cleanly without the hardware."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def _cuda_capability() -> tuple[int, int] | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_capability()
    except Exception:
        return None
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cc = _cuda_capability()
    nvcc = shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")
    require_nvcc = os.environ.get("FLASHINFER_SM12X_REQUIRE_NVCC", "") not in ("", "0")
    for item in items:
        if "cuda" in item.keywords and cc is None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none here (not counted as passing)"))
        if "sm12x" in item.keywords and (cc is None or cc[0] != 12):
            item.add_marker(pytest.mark.skip(reason="needs an SM120/SM121 GPU; none here (not counted as passing)"))
        if "emulation" in item.keywords and cc != (9, 0):
            item.add_marker(pytest.mark.skip(reason="needs an SM90 GPU for the emulated MMA atom"))
        if "compile_proof" in item.keywords and not nvcc and not require_nvcc:
            item.add_marker(pytest.mark.skip(reason="needs nvcc (CI sets FLASHINFER_SM12X_REQUIRE_NVCC=1)"))


@pytest.fixture(autouse=True)
def _fresh_device_targets() -> None:
    """Tests set FLASHINFER_SM12X_EMULATE / _ARCH per test: the ops' per-device target cache must re-read them."""
    from flashinfer_sm12x.jit.arch import clear_device_targets

    clear_device_targets()


@pytest.fixture
def emulate(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLASHINFER_SM12X_EMULATE=1 for one test: on an SM90 GPU the SM12x templates build for sm_90a with the emulated
    MMA atom (the GPU-less case is skipped by the markers above)."""
    monkeypatch.setenv("FLASHINFER_SM12X_EMULATE", "1")


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh private JIT cache for one test."""
    root = tmp_path / "jit-cache"
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    monkeypatch.setenv("FLASHINFER_SM12X_CACHE_DIR", str(root))
    monkeypatch.setenv("FLASHINFER_SM12X_QUIET", "0")
    from flashinfer_sm12x.jit import module

    module._loaded.clear()
    return root
