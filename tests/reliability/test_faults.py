# SPDX-License-Identifier: Apache-2.0
"""Faults that must lose nothing: an out-of-memory error while a MoE workspace grows, a corrupt or truncated cached
module, a full disk during a module build. JIT builds are faked (no compiler runs): the fake writes the artifact
the build would have written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from flashinfer_sm12x.jit import cache, module
from flashinfer_sm12x.jit.build import ARTIFACT
from flashinfer_sm12x.jit.selftest import selftest_spec
from flashinfer_sm12x.moe import pipeline

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _fail_once(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> list[int]:
    """torch.zeros raises `exc` on its next call, then behaves; returns the list of calls made."""
    real, calls = torch.zeros, []

    def zeros(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "zeros", zeros)
    return calls


def test_oom_while_a_workspace_grows_poisons_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = pipeline.Workspace(torch.device("cpu"))
    small = ws.take("x", 100, torch.uint8)
    small.fill_(7)
    ws.launchers[("k",)] = ("sentinel",)  # type: ignore[assignment]
    _fail_once(monkeypatch, OOM("CUDA out of memory (simulated)"))
    with pytest.raises(OOM):
        ws.take("x", 1000, torch.uint8)
    # The failed growth left everything as it was: the old buffer in place, nothing retired, caches intact.
    assert ws.store["x"].numel() == 100 and bool((ws.store["x"] == 7).all())
    assert ws.retired == [] and ("k",) in ws.launchers
    grown = ws.take("x", 1000, torch.uint8)  # the next call succeeds
    assert grown.numel() == 1000 and ws.store["x"].numel() == 1000
    assert len(ws.retired) == 1 and ws.retired[0].numel() == 100 and not ws.launchers


def test_oom_in_the_middle_of_a_forwards_buffers_then_the_next_call_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = pipeline.Workspace(torch.device("cpu"))
    plan = pipeline.row_plan(6, 2, 4, "mxfp4", None, None)
    real = torch.zeros
    calls: list[str] = []

    def zeros(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(str(kwargs.get("dtype")))
        if len(calls) == 4:  # the fourth buffer of the forward (GEMM1's output h)
            raise OOM("simulated")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "zeros", zeros)
    with pytest.raises(OOM):
        ws.views_for(plan, 128, 128, "mxfp4", False)
    assert not ws.views  # no half-made entry
    assert all(buf.numel() > 0 for buf in ws.store.values()) and "h" not in ws.store
    views = ws.views_for(plan, 128, 128, "mxfp4", False)
    assert views.h is not None and views.h.shape == (plan.bound, 256)
    assert ws.views[(plan, False)] is views


# ---- the JIT cache, with faked builds


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Builds without a compiler: `run_ninja` writes a fake artifact into the staging directory."""
    built: list[str] = []

    def run_ninja(ninja: str, plan: object, staging: Path) -> float:
        built.append(plan.module)  # type: ignore[attr-defined]
        (staging / ARTIFACT).write_bytes(b"\x7fELF fake module " + plan.module.encode() * 64)  # type: ignore[attr-defined]
        return 0.01

    monkeypatch.setattr(module, "run_ninja", run_ninja)
    monkeypatch.setattr(module, "read_depfiles", lambda staging: set())
    monkeypatch.setattr(module.toolchain, "find_ninja", lambda: "ninja")
    monkeypatch.setattr(module.toolchain, "find_cxx", lambda: "c++")
    monkeypatch.setattr(module.toolchain, "cxx_version", lambda cxx: "fake c++ 1.0")
    return built


def _module_files(mdir: Path) -> list[str]:
    return sorted(p.name for p in mdir.iterdir()) if mdir.exists() else []


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "manifest garbage"])
def test_corrupt_cached_module_is_refused_and_rebuilt(cache_root: Path, fake_build: list[str], damage: str) -> None:
    spec = selftest_spec(1)
    artifact = module.build_module(spec)
    mdir = artifact.parent
    if damage == "truncate":
        with open(artifact, "r+b") as fh:
            fh.truncate(os.path.getsize(artifact) // 2)
    elif damage == "flip":
        data = bytearray(artifact.read_bytes())
        data[5] ^= 0xFF
        artifact.write_bytes(bytes(data))
    elif damage == "empty":
        artifact.write_bytes(b"")
    else:
        (mdir / cache.MANIFEST).write_bytes(b"{not json")
    assert module.verify_spec(spec, mdir)[0] is None  # refused before anything is loaded
    with pytest.warns(UserWarning, match="discarding cached"):
        again = module.build_module(spec)
    assert fake_build == [spec.name, spec.name]
    assert module.verify_spec(spec, mdir)[0] == again


@pytest.mark.parametrize("where", ["artifact", "manifest"])
def test_full_disk_during_a_build_leaves_no_half_written_module(cache_root: Path, fake_build: list[str],
                                                                monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    spec = selftest_spec(2)
    mdir = module.module_dir_for(spec)
    enospc = OSError(errno.ENOSPC, "No space left on device")
    if where == "artifact":  # installing the artifact into the module directory
        real_replace = os.replace

        def replace(src: object, dst: object) -> None:
            if str(dst).endswith(".so"):
                raise enospc
            real_replace(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(module.os, "replace", replace)
    else:  # writing the manifest (the commit point)
        def write(self: cache.Manifest, module_dir: Path, staging: Path) -> None:
            raise enospc

        monkeypatch.setattr(cache.Manifest, "write", write)
    with pytest.raises(OSError) as info:
        module.build_module(spec)
    assert info.value.errno == errno.ENOSPC
    assert not [n for n in _module_files(mdir) if n.endswith(".so") or n == cache.MANIFEST]
    assert not list(mdir.parent.glob(f".build-{spec.name}-*"))  # no staging directory left either
    monkeypatch.undo()  # the disk has room again (and the fake build is gone with the other patches)
    assert module.verify_spec(spec, mdir)[0] is None


def test_build_after_a_full_disk_succeeds(cache_root: Path, fake_build: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = selftest_spec(3)
    real_write = cache.Manifest.write
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def write(self: cache.Manifest, module_dir: Path, staging: Path) -> None:
        if failures:
            raise failures.pop()
        real_write(self, module_dir, staging)

    monkeypatch.setattr(cache.Manifest, "write", write)
    with pytest.raises(OSError):
        module.build_module(spec)
    artifact = module.build_module(spec)
    assert fake_build == [spec.name, spec.name]
    assert module.verify_spec(spec, artifact.parent)[0] == artifact
    assert _module_files(artifact.parent) == sorted([artifact.name, cache.MANIFEST])
